"""``medseg batch`` and ``medseg batch-summary``: resumable, sharded prediction."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from medseg.cli.batch_report import batch_files_summary, batch_summary
from medseg.cli.checks import batch_output_folder, output_folder
from medseg.cli.options import (
    BACKEND,
    BATCH_SIZE,
    CRF,
    DICOM_SEG,
    FROM_PACS,
    KEEP_LARGEST,
    KEEP_PULLED,
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
    TO_PACS,
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
    from medseg.batch.runner import BatchSettings


def batch(
    scans_root: Path | None = typer.Argument(
        None,
        exists=True,
        help="Tree of DICOM series and NIfTI, NRRD or MetaImage files (not with --from-pacs).",
    ),
    model: str = MODEL,
    out: Path = typer.Option(
        ..., "--out", "-o", callback=output_folder, help="Output folder (one folder per scan)."
    ),
    workers: int = typer.Option(1, min=1, help="Worker processes (each loads the model)."),
    shard: str | None = typer.Option(
        None,
        help="This job's share I/N (0-based). Default: from SLURM_ARRAY_TASK_* or "
        "JOB_COMPLETION_INDEX + MEDSEG_SHARD_COUNT, else 0/1.",
    ),
    case_ids: CaseIdScheme = case_ids_option(),
    overlap: float = OVERLAP,
    batch_size: int = BATCH_SIZE,
    mirror: bool = MIRROR,
    keep_largest: str | None = KEEP_LARGEST,
    structures: str | None = STRUCTURES,
    model_postprocessing: bool = MODEL_POSTPROCESSING,
    crf: bool = CRF,
    backend: Backend = BACKEND,
    precision: Precision = PRECISION,
    dicom_seg: bool = DICOM_SEG,
    output_format: str = OUTPUT_FORMAT,
    meshes: bool = MESHES,
    rtstruct: bool = RTSTRUCT,
    radiomics: bool = RADIOMICS,
    uncertainty: bool = UNCERTAINTY,
    non_finite: NonFinitePolicy = NON_FINITE,
    tracking_uri: str | None = tracking_uri_option("MLflow tracking URI (models, batch run)."),
    experiment: str = typer.Option("medseg-batch", help="MLflow experiment of the batch run."),
    force: bool = typer.Option(False, "--force", help="Redo scans whose outputs are complete."),
    from_pacs: Path | None = FROM_PACS,
    to_pacs: Path | None = TO_PACS,
    keep_pulled: bool = KEEP_PULLED,
) -> None:
    """Segment every scan under SCANS_ROOT in parallel workers, resumably and sharded.

    A scan's outputs appear in OUT/<case_id>/ all at once; scans already complete are skipped,
    so a killed batch is simply run again. With --from-pacs the scans are pulled from a PACS
    into OUT/.pacs/incoming; with --to-pacs each finished case's SEG, volume SR and overlay
    are sent back once per series and model version. Exit code 0 when every scan (and
    delivery) of the shard is done, 1 when any failed (see OUT/failures.jsonl and
    OUT/.pacs/deliveries.jsonl).
    """
    from medseg.tracking.store import require_store_for_model

    require_store_for_model(model, tracking_uri)  # seconds, before the heavy imports
    from medseg.batch.sharding import resolve_shard
    from medseg.errors import ShardError

    try:
        chosen = resolve_shard(shard, os.environ)
    except ShardError as error:
        raise typer.BadParameter(str(error), param_hint="--shard") from error
    from medseg.batch.runner import BatchSettings
    from medseg.infer.outputs import ScanOutputs

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
    )
    refuse_with_structures(structures, uncertainty=uncertainty)
    if from_pacs is None and scans_root is None:
        raise typer.BadParameter("give SCANS_ROOT or --from-pacs", param_hint="SCANS_ROOT")
    settings = BatchSettings(
        workers=workers,
        shard=chosen,
        options=options,
        case_ids=case_ids,
        outputs=ScanOutputs(
            output_format,
            dicom_seg,
            meshes=meshes,
            rtstruct=rtstruct,
            radiomics=radiomics,
            uncertainty=uncertainty,
        ),
        force=force,
        tracking_uri=tracking_uri,
        experiment=experiment,
    )
    if from_pacs is not None or to_pacs is not None:
        code = _pacs_batch(
            model, out, settings, from_pacs, to_pacs, scans_root, keep_pulled=keep_pulled
        )
    else:
        assert scans_root is not None
        code = _batch(model, out, settings, scans_root)
    raise typer.Exit(code)


def _batch(model: str, out: Path, settings: BatchSettings, scans_root: Path) -> int:
    """Segment the scans under ``scans_root``; the exit code."""
    from medseg.batch.runner import run_batch

    with phase_progress() as progress:
        report = run_batch(scans_root, model, out, settings=settings, on_progress=progress)
    batch_summary(report)
    return report.exit_code


def _pacs_batch(
    model: str,
    out: Path,
    settings: BatchSettings,
    from_pacs: Path | None,
    to_pacs: Path | None,
    scans_root: Path | None,
    *,
    keep_pulled: bool,
) -> int:
    """Pull (``from_pacs``) or take ``scans_root``, segment, push (``to_pacs``); the exit code."""
    from medseg.cli.pacs import load_pacs, pull_summary, push_summary
    from medseg.pacs.batch import run_pacs_batch

    source = load_pacs(from_pacs) if from_pacs else None
    target = load_pacs(to_pacs) if to_pacs else None
    with phase_progress() as progress:
        report = run_pacs_batch(
            model_uri=model,
            out_dir=out,
            from_pacs=source,
            to_pacs=target,
            scans_root=scans_root,
            keep_pulled=keep_pulled,
            settings=settings,
            on_progress=progress,
        )
    if report.pull is not None:
        pull_summary(report.pull)
    batch_summary(report.batch)
    if report.push is not None:
        push_summary(report.push)
    if report.removed_pulled:
        console.print(f"deleted the pulled images of {report.removed_pulled} delivered series")
    return report.exit_code


def batch_summary_command(
    out: Path = typer.Argument(
        ...,
        exists=True,
        file_okay=False,
        callback=batch_output_folder,
        help="A batch's OUT folder.",
    ),
) -> None:
    """Rebuild OUT/summary.csv and OUT/failures.jsonl from the per-scan records.

    For a final step after the shards of a job array wrote into one OUT folder. Exit code 1
    when any scan has failed.
    """
    from medseg.batch.summary import write_summary

    files = write_summary(out)
    batch_files_summary(files)
    raise typer.Exit(1 if files.failed else 0)
