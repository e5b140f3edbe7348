"""The options several commands share, each declared once (name, default, help, check).

A command lists them as defaults of its parameters (``overlap: float = OVERLAP``); the
prediction options of ``predict`` and ``batch`` become one ``PredictionOptions`` through
``prediction_options``. Options whose help names the command's purpose are made by a function
that takes that help.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from medseg.cli.checks import check_precision, interval, structure_list, volume_format
from medseg.infer.choices import Backend, Precision
from medseg.ingest.case_ids import CaseIdScheme
from medseg.ingest.non_finite import NonFinitePolicy

if TYPE_CHECKING:
    from medseg.infer.options import PredictionOptions

MODEL = typer.Option(..., "--model", help="models:/NAME@ALIAS, models:/NAME/N or folder.")
DATA_ROOT = typer.Option(
    None, "--data-root", exists=True, file_okay=False, help="Root of the manifest's paths."
)
WORKERS = typer.Option(2, min=1, help="Worker processes.")
CASE_IDS_HELP = "hash: anonymous ids; folder: folder/file names (paths then appear in outputs)."
NON_FINITE = typer.Option(
    NonFinitePolicy.ERROR,
    "--non-finite",
    help="Scans with NaN/Inf voxels: error (refuse them) or replace-min (the scan's lowest "
    "finite value; recorded with the case).",
)
TRACKING_URI_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlruns SQLite)."

# Prediction options (predict, batch): see medseg.infer.predictor.PredictionOptions.
OVERLAP = typer.Option(0.5, callback=interval("[0, 1)"), help="Sliding-window overlap, in [0, 1).")
BATCH_SIZE = typer.Option(
    2,
    min=1,
    help="Windows per forward pass, at most: fewer when their output would pass 256 MB "
    "(one window at 118 classes over 96^3 voxels).",
)
MIRROR = typer.Option(False, "--mirror", help="Mirroring test-time augmentation.")
KEEP_LARGEST = typer.Option(
    None,
    callback=structure_list,
    help='Keep only the largest component of these structures: "all" or "1,3".',
)
STRUCTURES = typer.Option(
    None,
    help='Write and measure only these structures: names or label values, "liver,spleen".',
)
FAST = typer.Option(
    False, "--fast", help="Only the model's low-resolution networks (e.g. 3 mm): faster, coarser."
)
CRF = typer.Option(
    False, "--crf", help="Refine the probabilities with a dense CRF (default settings)."
)
MODEL_POSTPROCESSING = typer.Option(
    True,
    "--model-postprocessing/--no-model-postprocessing",
    help="Apply the post-processing stored with the model (chosen by medseg select).",
)
BACKEND = typer.Option(
    Backend.AUTO,
    help="Inference engine; auto: CUDA torch on a GPU, else OpenVINO, else ONNX Runtime, else "
    "torch (the choice is logged).",
)
PRECISION = typer.Option(
    Precision.AUTO,
    help="auto: bf16 when OpenVINO runs on a CPU with bf16 units and the model's agreement with "
    "fp32 measured at export is >= 99.9%, else fp32; bf16 asked for by name needs that agreement; "
    "int8 (opt-in, OpenVINO) needs a model trained with --int8 and the same agreement.",
)
DICOM_SEG = typer.Option(True, help="Write a DICOM SEG for DICOM inputs.")
MESHES = typer.Option(
    False,
    "--meshes",
    help="Also write <case>.meshes/<structure>.stl and .obj (LPS mm) and surface areas.",
)
UNCERTAINTY = typer.Option(
    False,
    "--uncertainty",
    help="Also write <case>.uncertainty.nii.gz: the voxel-wise entropy of the class "
    "probabilities over its maximum (0 sure, 1 all classes alike), in steps of 1/255.",
)
RTSTRUCT = typer.Option(
    False, "--rtstruct", help="Also write <case>_rtstruct.dcm (RT Structure Set) for DICOM inputs."
)
RADIOMICS = typer.Option(
    False,
    "--radiomics",
    help="Also write <case>.radiomics.json and .csv: shape and first-order features "
    "(PyRadiomics names and defaults) per structure.",
)
FROM_PACS = typer.Option(
    None, "--from-pacs", exists=True, dir_okay=False, help="Pull the scans: a PACS file."
)
TO_PACS = typer.Option(
    None, "--to-pacs", exists=True, dir_okay=False, help="Push the results: a PACS file."
)
KEEP_PULLED = typer.Option(
    False, "--keep-pulled", help="Keep pulled images of delivered series (default: delete)."
)
OUTPUT_FORMAT = typer.Option(
    "nifti", callback=volume_format, help="Label map format: nifti, nrrd or mha."
)


def case_ids_option(help: str = CASE_IDS_HELP) -> Any:
    """``--case-ids hash|folder``; ``help`` says what the folder names are in this command."""
    return typer.Option(CaseIdScheme.HASH, "--case-ids", help=help)


def tracking_uri_option(help: str = TRACKING_URI_HELP) -> Any:
    """``--tracking-uri``; ``help`` says what this command uses the store for."""
    return typer.Option(None, help=help)


def prediction_options(
    *,
    overlap: float,
    batch_size: int,
    mirror: bool,
    keep_largest: str | None,
    crf: bool,
    backend: Backend,
    precision: Precision,
    non_finite: NonFinitePolicy,
    model_postprocessing: bool = True,
    structures: str | None = None,
    fast: bool = False,
) -> PredictionOptions:
    """The ``PredictionOptions`` the prediction options above ask for.

    ``keep_largest`` is kept as ``"all"`` or a list of values, ``structures`` as a list of
    names or values: the model checks them.

    Raises:
        typer.BadParameter: a precision the backend does not offer.
    """
    from medseg.infer.options import CrfSettings, PredictionOptions

    check_precision(precision, backend)
    return PredictionOptions(
        overlap=overlap,
        batch_size=batch_size,
        mirror=mirror,
        keep_largest=keep_largest,  # type: ignore[arg-type]  # "1,3": a before-validator parses it
        crf=CrfSettings() if crf else None,
        backend=backend,
        precision=precision,
        non_finite=non_finite,
        model_postprocessing=model_postprocessing,
        fast=fast,
        structures=structures,  # type: ignore[arg-type]  # "a,b": a before-validator parses it
    )


def refuse_with_structures(structures: str | None, **asked: bool) -> None:
    """Refuse ``--structures`` beside outputs that need every class (``asked``: option name
    without dashes -> given).

    Raises:
        typer.BadParameter: both given.
    """
    given = [f"--{name}" for name, on in asked.items() if on]
    if structures and given:
        raise typer.BadParameter(
            f"{' and '.join(given)} need every class; ask for them or for --structures",
            param_hint="--structures",
        )
