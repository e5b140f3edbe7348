"""The ``medseg`` command line: parse, call one function, print."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer

from medseg import __version__, shutdown
from medseg.cli_errors import MedsegGroup
from medseg.cli_options import (
    BACKEND,
    BATCH_SIZE,
    CASE_IDS,
    DATA_ROOT,
    NON_FINITE,
    OVERLAP,
    PRECISION,
    batch_output_folder,
    check_precision,
    interval,
    keep_largest_structures,
    output_file,
    output_folder,
    parse_label_names,
    refuse_no_scans,
    structure_list,
)
from medseg.cli_pacs import pacs_app
from medseg.cli_pipeline import demo as demo_command
from medseg.cli_pipeline import run as run_pipeline_command
from medseg.infer.choices import Backend, Precision
from medseg.ingest.case_ids import CaseIdScheme
from medseg.ingest.non_finite import NonFinitePolicy

app = typer.Typer(
    cls=MedsegGroup,
    pretty_exceptions_show_locals=False,  # locals may hold patient data; tracebacks are for bugs
    help="medseg: medical-image segmentation (ingest, preprocess, train, infer, evaluate).",
    no_args_is_help=True,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@app.command()
def ingest(
    input_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder to search."),
    out: Path = typer.Option(
        ..., "--out", "-o", callback=output_folder, help="Output folder (volumes + manifest)."
    ),
    labels: Path | None = typer.Option(
        None,
        "--labels",
        exists=True,
        file_okay=False,
        help="Folder of <case_id>.nii.gz label maps to pair with the scans.",
    ),
    case_ids: CaseIdScheme = typer.Option(
        CaseIdScheme.HASH, "--case-ids", help="hash: anonymous ids; folder: series folder names."
    ),
    workers: int | None = typer.Option(None, min=1, help="Decoder processes (default: all cores)."),
    force: bool = typer.Option(False, "--force", help="Convert again even if unchanged."),
    non_finite: NonFinitePolicy = NON_FINITE,
) -> None:
    """Convert every DICOM series and NIfTI file under INPUT_DIR into canonical volumes.

    Exit code 0 when every scan converted (skipped non-scan files are not failures),
    1 when some scans, files or folders failed (the others are still written), 2 when it
    cannot start (e.g. --labels is not a folder).
    """
    from medseg.cli_output import ingest_summary, phase_progress
    from medseg.ingest import ingest as run_ingest

    with phase_progress() as progress:
        report = run_ingest(
            input_dir,
            out,
            case_ids=case_ids,
            labels_dir=labels,
            workers=workers,
            force=force,
            non_finite=non_finite,
            on_progress=progress,
        )
    if not report.outcomes:
        refuse_no_scans(input_dir, ignored=report.ignored_files)
    ingest_summary(report)
    raise typer.Exit(report.exit_code)


@app.command("import-dataset")
def import_dataset(
    dataset_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Dataset folder."),
    out: Path = typer.Option(
        ..., "--out", "-o", callback=output_file, help="Manifest to write (NAME.jsonl)."
    ),
    data_root: Path | None = typer.Option(
        None,
        "--data-root",
        exists=True,
        file_okay=False,
        help="Write paths relative to this folder instead of the manifest's.",
    ),
    modality: str | None = typer.Option(None, help="Modality when dataset.json does not say."),
    val_fraction: float = typer.Option(
        0.2, callback=interval("[0, 1)"), help="Fraction of labelled cases for validation."
    ),
    test_fraction: float = typer.Option(
        0.0, callback=interval("[0, 1)"), help="Fraction of labelled cases held out for test."
    ),
    seed: int = typer.Option(0, help="Seed of the reproducible split assignment."),
    label_names: dict[int, str] | None = typer.Option(
        None,
        "--label-names",
        parser=parse_label_names,
        metavar="VALUE=NAME,...",
        help='Names when no dataset.json has them: "1=anterior,2=posterior".',
    ),
) -> None:
    """Import an MSD/nnU-Net (imagesTr/labelsTr) or flat images/+labels/ dataset into a manifest.

    Orphans and rejected pairs are reported, not fatal; exit code 1 when any pair was rejected.
    """
    from medseg.cli_output import import_summary
    from medseg.datasets import import_dataset as run_import
    from medseg.manifest import write_label_names

    if val_fraction + test_fraction > 1:
        raise typer.BadParameter(
            f"{val_fraction:g} + {test_fraction:g} leaves no share for training",
            param_hint="--val-fraction + --test-fraction",
        )
    report = run_import(
        dataset_dir,
        manifest_path=out,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        data_root=data_root,
        modality=modality,
    )
    if label_names:
        names = {0: "background", **label_names}
        write_label_names(names, out)
        report.label_names = names
    import_summary(report)
    raise typer.Exit(1 if report.rejected else 0)


@app.command("validate-manifest")
def validate_manifest(
    manifest: Path = typer.Argument(..., exists=True, dir_okay=False, help="Manifest (.jsonl)."),
    data_root: Path | None = DATA_ROOT,
) -> None:
    """Check a manifest: files exist, checksums, shapes/spacings, image/label grids, labels.

    Exit code 0 when every case is valid, 1 otherwise.
    """
    from medseg.cli_output import validation_summary
    from medseg.manifest_validation import validate_manifest as run_validation

    result = run_validation(manifest, data_root=data_root)
    validation_summary(result)
    raise typer.Exit(0 if result.ok else 1)


@app.command()
def plan(
    manifest: Path = typer.Argument(..., exists=True, dir_okay=False, help="Data manifest."),
    out: Path = typer.Option(
        ..., "--out", "-o", callback=output_file, help="Plan file to write (plan.json)."
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        exists=True,
        dir_okay=False,
        help="Plan options YAML (configs/plan/*.yaml); overrides.",
    ),
    data_root: Path | None = DATA_ROOT,
    workers: int = typer.Option(2, min=1, help="Worker processes."),
) -> None:
    """Fingerprint the training cases and write the preprocessing/network plan."""
    from medseg.cli_output import plan_summary
    from medseg.preprocess.config import load_plan_options
    from medseg.preprocess.plan import plan_manifest

    result = plan_manifest(
        manifest, options=load_plan_options(config), data_root=data_root, workers=workers
    )
    result.save(out)
    plan_summary(result, out)


@app.command()
def preprocess(
    manifest: Path = typer.Argument(..., exists=True, dir_okay=False, help="Data manifest."),
    plan_file: Path = typer.Option(..., "--plan", exists=True, dir_okay=False, help="plan.json"),
    out: Path = typer.Option(..., "--out", "-o", callback=output_folder, help="Cache folder."),
    data_root: Path | None = DATA_ROOT,
    workers: int = typer.Option(2, min=1, help="Worker processes."),
    force: bool = typer.Option(False, "--force", help="Redo cases even if unchanged."),
) -> None:
    """Resample, normalize and crop every case into a memory-mappable cache.

    Exit code 0 when every case succeeded, 1 when some failed (the others are cached).
    """
    from medseg.cli_output import phase_progress, preprocess_summary
    from medseg.preprocess.plan import Plan
    from medseg.preprocess.stage import preprocess_manifest

    with phase_progress() as progress:
        report = preprocess_manifest(
            manifest,
            plan=Plan.load(plan_file),
            cache_dir=out,
            data_root=data_root,
            workers=workers,
            force=force,
            on_progress=progress,
        )
    preprocess_summary(report)
    raise typer.Exit(report.exit_code)


@app.command()
def train(
    manifest: Path = typer.Option(..., "--manifest", "-m", exists=True, dir_okay=False),
    plan_file: Path = typer.Option(..., "--plan", "-p", exists=True, dir_okay=False),
    config: Path | None = typer.Option(
        None, "--config", "-c", exists=True, dir_okay=False, help="configs/train/*.yaml"
    ),
    cache: Path | None = typer.Option(
        None,
        callback=output_folder,
        help="Preprocessing cache (default: 'cache' beside the plan; built if missing).",
    ),
    run_dir: Path = typer.Option(
        Path("runs/train"), callback=output_folder, help="Checkpoints, pictures, curves."
    ),
    data_root: Path | None = DATA_ROOT,
    resume: bool = typer.Option(False, "--resume", help="Continue from run-dir's last checkpoint."),
    max_minutes: float | None = typer.Option(
        None, callback=interval("(0, inf)"), help="Time budget (overrides the config)."
    ),
    epochs: int | None = typer.Option(None, min=1, help="Epochs (overrides the config)."),
    registered_model_name: str | None = typer.Option(
        None, "--register", help="Register the model under this name (overrides the config)."
    ),
    tracking_uri: str | None = typer.Option(
        None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlruns SQLite)."
    ),
) -> None:
    """Train a 2D/3D network from the cache; everything is tracked in MLflow.

    Runs on CUDA when present (with AMP), else CPU; under torchrun with DistributedDataParallel.
    """
    from medseg.tracking.store import require_tracking_store

    require_tracking_store(tracking_uri)  # seconds, before the imports and the preprocessing
    from medseg.cli_output import train_summary
    from medseg.manifest import read_manifest
    from medseg.preprocess.plan import Plan
    from medseg.train.config import check_against_plan, load_train_config
    from medseg.train.loop import train as run_training

    # Everything is checked before the (long) preprocessing starts.
    settings = load_train_config(
        config, max_minutes=max_minutes, epochs=epochs, registered_model_name=registered_model_name
    )
    plan_model = Plan.load(plan_file)
    check_against_plan(settings, plan_model, source=config)
    read_manifest(manifest)
    cache_dir = cache or plan_file.parent / "cache"
    if "RANK" not in os.environ:  # under torchrun the cache must exist beforehand
        from medseg.preprocess.stage import preprocess_manifest

        preprocess_manifest(manifest, plan=plan_model, cache_dir=cache_dir, data_root=data_root)
    result = run_training(
        manifest_path=manifest,
        plan=plan_model,
        cache_dir=cache_dir,
        config=settings,
        run_dir=run_dir,
        resume=resume,
        tracking_uri=tracking_uri,
    )
    if os.environ.get("RANK", "0") == "0":
        train_summary(result)


@app.command()
def predict(
    input_path: Path = typer.Argument(..., exists=True, help="NIfTI file, DICOM folder or tree."),
    model: str = typer.Option(..., "--model", help="models:/NAME@ALIAS, models:/NAME/N or folder."),
    out: Path = typer.Option(..., "--out", "-o", callback=output_folder, help="Output folder."),
    overlap: float = OVERLAP,
    batch_size: int = BATCH_SIZE,
    mirror: bool = typer.Option(False, "--mirror", help="Mirroring test-time augmentation."),
    keep_largest: str | None = typer.Option(
        None,
        callback=structure_list,
        help='Keep only the largest component of these structures: "all" or "1,3".',
    ),
    crf: bool = typer.Option(
        False, "--crf", help="Refine the probabilities with a dense CRF (default settings)."
    ),
    backend: Backend = BACKEND,
    precision: Precision = PRECISION,
    dicom_seg: bool = typer.Option(True, help="Write a DICOM SEG for DICOM inputs."),
    probabilities: bool = typer.Option(
        False, "--probabilities", help="Also write <case>.probabilities.npz (float16)."
    ),
    case_ids: CaseIdScheme = CASE_IDS,
    non_finite: NonFinitePolicy = NON_FINITE,
    tracking_uri: str | None = typer.Option(None, help="MLflow tracking URI for models:/ URIs."),
) -> None:
    """Segment every scan under INPUT_PATH with a packaged model.

    Exit code 0 when every scan was segmented, 1 when some failed (the others are written).
    """
    from medseg.tracking.store import require_store_for_model

    require_store_for_model(model, tracking_uri)  # seconds, before the heavy imports
    from medseg.cli_output import phase_progress, predict_summary
    from medseg.infer.crf import CrfSettings
    from medseg.infer.predictor import PredictionOptions, load_packaged_model
    from medseg.infer.stage import predict_path

    check_precision(precision, backend)
    packaged = load_packaged_model(model, tracking_uri=tracking_uri)
    structures = keep_largest_structures(keep_largest, packaged.label_names)
    options = PredictionOptions(
        overlap=overlap,
        batch_size=batch_size,
        mirror=mirror,
        keep_largest=structures,
        crf=CrfSettings() if crf else None,
        backend=backend,
        precision=precision,
        non_finite=non_finite,
    )
    with phase_progress() as progress:
        report = predict_path(
            input_path,
            packaged,
            out_dir=out,
            options=options,
            case_ids=case_ids,
            dicom_seg=dicom_seg,
            probabilities=probabilities,
            on_progress=progress,
        )
    if not report.outcomes:
        refuse_no_scans(input_path)
    predict_summary(report)
    raise typer.Exit(report.exit_code)


@app.command()
def batch(
    scans_root: Path | None = typer.Argument(
        None, exists=True, help="Tree of DICOM series and NIfTI (not with --from-pacs)."
    ),
    model: str = typer.Option(..., "--model", help="models:/NAME@ALIAS, models:/NAME/N or folder."),
    out: Path = typer.Option(
        ..., "--out", "-o", callback=output_folder, help="Output folder (one folder per scan)."
    ),
    workers: int = typer.Option(1, min=1, help="Worker processes (each loads the model)."),
    shard: str | None = typer.Option(
        None,
        help="This job's share I/N (0-based). Default: from SLURM_ARRAY_TASK_* or "
        "JOB_COMPLETION_INDEX + MEDSEG_SHARD_COUNT, else 0/1.",
    ),
    case_ids: CaseIdScheme = CASE_IDS,
    overlap: float = OVERLAP,
    batch_size: int = BATCH_SIZE,
    mirror: bool = typer.Option(False, "--mirror", help="Mirroring test-time augmentation."),
    crf: bool = typer.Option(
        False, "--crf", help="Refine the probabilities with a dense CRF (default settings)."
    ),
    backend: Backend = BACKEND,
    dicom_seg: bool = typer.Option(True, help="Write a DICOM SEG for DICOM inputs."),
    non_finite: NonFinitePolicy = NON_FINITE,
    tracking_uri: str | None = typer.Option(
        None, help="MLflow tracking URI (models:/ URIs and the batch run)."
    ),
    experiment: str = typer.Option("medseg-batch", help="MLflow experiment of the batch run."),
    force: bool = typer.Option(False, "--force", help="Redo scans whose outputs are complete."),
    from_pacs: Path | None = typer.Option(
        None, "--from-pacs", exists=True, dir_okay=False, help="Pull the scans: a PACS file."
    ),
    to_pacs: Path | None = typer.Option(
        None, "--to-pacs", exists=True, dir_okay=False, help="Push the results: a PACS file."
    ),
    keep_pulled: bool = typer.Option(
        False, "--keep-pulled", help="Keep pulled images of delivered series (default: delete)."
    ),
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
    from medseg.batch.sharding import ShardError, resolve_shard
    from medseg.cli_output import batch_summary, phase_progress

    try:
        chosen = resolve_shard(shard, os.environ)
    except ShardError as error:
        raise typer.BadParameter(str(error), param_hint="--shard") from error
    from medseg.batch.runner import run_batch
    from medseg.infer.crf import CrfSettings
    from medseg.infer.predictor import PredictionOptions

    options = PredictionOptions(
        overlap=overlap,
        batch_size=batch_size,
        mirror=mirror,
        crf=CrfSettings() if crf else None,
        backend=backend,
        non_finite=non_finite,
    )
    if from_pacs is None and scans_root is None:
        raise typer.BadParameter("give SCANS_ROOT or --from-pacs", param_hint="SCANS_ROOT")
    batch_options = {
        "workers": workers,
        "shard": chosen,
        "options": options,
        "case_ids": case_ids,
        "dicom_seg": dicom_seg,
        "force": force,
        "tracking_uri": tracking_uri,
        "experiment": experiment,
    }
    if from_pacs is not None or to_pacs is not None:
        from medseg.cli_pacs import pacs_batch

        pacs_batch(
            from_pacs=from_pacs,
            to_pacs=to_pacs,
            scans_root=scans_root,
            keep_pulled=keep_pulled,
            model_uri=model,
            out_dir=out,
            **batch_options,
        )
    with phase_progress() as progress:
        report = run_batch(scans_root, model, out, on_progress=progress, **batch_options)
    batch_summary(report)
    raise typer.Exit(report.exit_code)


@app.command("batch-summary")
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
    from medseg.cli_output import batch_files_summary

    files = write_summary(out)
    batch_files_summary(files)
    raise typer.Exit(1 if files.failed else 0)


@app.command()
def evaluate(
    predictions: Path = typer.Argument(..., exists=True, help="Label map file or folder."),
    references: Path = typer.Argument(..., exists=True, help="Reference file or folder."),
    out: Path = typer.Option(..., "--out", "-o", callback=output_folder, help="Report folder."),
    labels: Path | None = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="Label names: JSON {value: name}, a dataset.json or a manifest .labels.json.",
    ),
    tolerance_mm: float = typer.Option(
        1.0, callback=interval("(0, inf)"), help="Normalized surface Dice tolerance (mm)."
    ),
    images: Path | None = typer.Option(
        None, exists=True, file_okay=False, help="Folder of <case>.nii.gz scans for pictures."
    ),
    run_id: str | None = typer.Option(
        None, envvar="MLFLOW_RUN_ID", help="Log the report into this MLflow run."
    ),
    tracking_uri: str | None = typer.Option(None, help="MLflow tracking URI."),
) -> None:
    """Per-structure Dice, IoU, HD95, surface Dice and volumes; CSV, JSON and HTML reports.

    Cases are paired by file name; a case missing on either side is reported. Exit code 1
    when a case is missing or failed.
    """
    from medseg.cli_output import evaluation_summary
    from medseg.evaluate.pairing import pair_label_maps, reference_label_names
    from medseg.evaluate.report import log_to_run, summary, write_reports
    from medseg.evaluate.stage import evaluate_pairing
    from medseg.manifest import load_label_names

    if run_id:  # the report is logged after the work: the run must be there before it
        from medseg.tracking.store import require_tracking_store

        require_tracking_store(tracking_uri)  # seconds, before importing mlflow
        from medseg.tracking.client import require_run

        require_run(run_id, tracking_uri=tracking_uri)
    pairing = pair_label_maps(predictions, references)
    names = load_label_names(labels) if labels else reference_label_names(pairing)
    report = evaluate_pairing(pairing, label_names=names, tolerance_mm=tolerance_mm)
    paths = write_reports(report, pairing, out_dir=out, images=images)
    if run_id:
        log_to_run(paths, summary(report), run_id=run_id, tracking_uri=tracking_uri)
    evaluation_summary(report, paths)
    incomplete = report.failed or report.missing_prediction or report.missing_reference
    raise typer.Exit(1 if incomplete else 0)


app.command("run")(run_pipeline_command)
app.add_typer(pacs_app, name="pacs")
app.command("demo")(demo_command)


def main() -> None:
    """Entry point of the ``medseg`` console script."""
    try:
        app()
    except SystemExit as done:
        if shutdown.stopped_by() is not None:  # stopping: every second of grace counts
            shutdown.exit_now(done.code if isinstance(done.code, int) else 1)
        raise
