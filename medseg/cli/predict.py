"""``medseg predict``: every scan under a path through a packaged model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from medseg.cli.checks import output_folder, refuse_no_scans
from medseg.cli.options import (
    BACKEND,
    BATCH_SIZE,
    CRF,
    DICOM_SEG,
    FAST,
    KEEP_LARGEST,
    MESHES,
    MIRROR,
    MODEL,
    MODEL_POSTPROCESSING,
    NON_FINITE,
    OUTPUT_FORMAT,
    OVERLAP,
    PRECISION,
    RADIOMICS,
    RTSTRUCT,
    STRUCTURES,
    UNCERTAINTY,
    case_ids_option,
    prediction_options,
    refuse_with_structures,
    tracking_uri_option,
)
from medseg.cli.render import console, phase_progress
from medseg.infer.choices import Backend, Precision
from medseg.ingest.case_ids import CaseIdScheme
from medseg.ingest.non_finite import NonFinitePolicy

if TYPE_CHECKING:
    from medseg.infer.stage import PredictReport


def predict(
    input_path: Path = typer.Argument(
        ..., exists=True, help="NIfTI, NRRD or MetaImage file, DICOM folder or tree."
    ),
    model: str = MODEL,
    out: Path = typer.Option(..., "--out", "-o", callback=output_folder, help="Output folder."),
    overlap: float = OVERLAP,
    batch_size: int = BATCH_SIZE,
    mirror: bool = MIRROR,
    keep_largest: str | None = KEEP_LARGEST,
    structures: str | None = STRUCTURES,
    fast: bool = FAST,
    model_postprocessing: bool = MODEL_POSTPROCESSING,
    crf: bool = CRF,
    backend: Backend = BACKEND,
    precision: Precision = PRECISION,
    dicom_seg: bool = DICOM_SEG,
    probabilities: bool = typer.Option(
        False, "--probabilities", help="Also write <case>.probabilities.npz (float16)."
    ),
    output_format: str = OUTPUT_FORMAT,
    meshes: bool = MESHES,
    rtstruct: bool = RTSTRUCT,
    radiomics: bool = RADIOMICS,
    uncertainty: bool = UNCERTAINTY,
    case_ids: CaseIdScheme = case_ids_option(),
    non_finite: NonFinitePolicy = NON_FINITE,
    tracking_uri: str | None = tracking_uri_option("MLflow tracking URI for models:/ URIs."),
) -> None:
    """Segment every scan under INPUT_PATH with a packaged model.

    Exit code 0 when every scan was segmented, 1 when some failed (the others are written).
    """
    from medseg.tracking.store import require_store_for_model

    require_store_for_model(model, tracking_uri)  # seconds, before the heavy imports
    from medseg.errors import ConfigError, UnknownChoiceError
    from medseg.infer.outputs import ScanOutputs
    from medseg.infer.predictor import load_packaged_model
    from medseg.infer.stage import predict_path

    options = prediction_options(
        overlap=overlap,
        batch_size=batch_size,
        mirror=mirror,
        keep_largest=keep_largest,
        crf=crf,
        backend=backend,
        precision=precision,
        non_finite=non_finite,
        model_postprocessing=model_postprocessing,
        structures=structures,
        fast=fast,
    )
    refuse_with_structures(structures, probabilities=probabilities, uncertainty=uncertainty)
    packaged = load_packaged_model(model, tracking_uri=tracking_uri)
    try:
        options.kept_structures(packaged.label_names)
    except ConfigError as error:
        raise typer.BadParameter(str(error), param_hint="--keep-largest") from error
    try:
        options.selected_structures(packaged.label_names)
    except UnknownChoiceError as error:
        raise typer.BadParameter(str(error), param_hint="--structures") from error
    console.print(f"model {escape(model)}: {packaged.description}")
    with phase_progress() as progress:
        report = predict_path(
            input_path,
            packaged,
            out_dir=out,
            options=options,
            case_ids=case_ids,
            outputs=ScanOutputs(
                output_format,
                dicom_seg,
                probabilities,
                meshes,
                rtstruct=rtstruct,
                radiomics=radiomics,
                uncertainty=uncertainty,
            ),
            on_progress=progress,
        )
    if not report.outcomes:
        refuse_no_scans(input_path)
    predict_summary(report)
    raise typer.Exit(report.exit_code)


def predict_summary(report: PredictReport) -> None:
    """Print one row per scan: case, time, structure volumes (mL) or the failure reason."""
    table = Table(title=f"Predictions -> {report.out_dir}")
    for column in ("case", "source", "seconds", "volumes (mL) / reason"):
        table.add_column(column, overflow="fold")
    for outcome in report.outcomes:
        if outcome.ok:
            present = {k: v for k, v in outcome.volumes_ml.items() if v > 0}
            detail = ", ".join(f"{name} {ml:.2f}" for name, ml in present.items())
            table.add_row(outcome.case_id, outcome.source or "", f"{outcome.seconds:.1f}", detail)
        else:
            reason = f"[red]{escape(outcome.reason)}[/red]"
            table.add_row(outcome.case_id, outcome.source or "", "-", reason)
    console.print(table)
    failed = sum(not o.ok for o in report.outcomes)
    console.print(f"[bold]{len(report.outcomes) - failed} segmented, {failed} failed[/bold]")
