"""``medseg run``: a pipeline file from the command line, with a stage-by-stage summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from medseg.cli.checks import output_folder
from medseg.cli.options import tracking_uri_option
from medseg.cli.render import console, metric_cell, phase_progress

if TYPE_CHECKING:
    from medseg.pipeline.records import StageRecord
    from medseg.pipeline.runner import PipelineReport

_STATUS_STYLE = {"done": "green", "skipped": "cyan", "failed": "bold red", "running": "yellow"}


def run(
    pipeline: Path = typer.Argument(..., exists=True, dir_okay=False, help="pipelines/NAME.yaml"),
    data_root: Path | None = typer.Option(
        None,
        "--data-root",
        exists=True,
        file_okay=False,
        help="Folder the pipeline's data paths are relative to.",
    ),
    work_dir: Path | None = typer.Option(
        None,
        "--work-dir",
        callback=output_folder,
        help="Stage folders (default: runs/<pipeline name>).",
    ),
    from_stage: str | None = typer.Option(
        None, "--from", help="Run this stage and every later one even if up to date."
    ),
    to_stage: str | None = typer.Option(None, "--to", help="Stop after this stage."),
    force: bool = typer.Option(False, "--force", help="Run every stage even if up to date."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a stage option: STAGE.KEY=VALUE (repeatable)."
    ),
    tracking_uri: str | None = tracking_uri_option(),
) -> None:
    """Run a pipeline: stages in order, each skipped when its inputs and config are unchanged.

    Exit code 0 when every stage succeeded without problems, 1 when a stage failed (later
    stages do not run) or some scans/cases failed inside a stage.
    """
    from medseg.tracking.store import require_tracking_store

    require_tracking_store(tracking_uri)  # seconds, before the imports and the first stage
    from medseg.pipeline.runner import RunSelection, run_pipeline
    from medseg.pipeline.spec import load_pipeline

    spec = load_pipeline(pipeline, overrides)
    with phase_progress() as progress:
        report = run_pipeline(
            spec,
            work_dir=work_dir or Path("runs") / spec.name,
            data_root=data_root,
            selection=RunSelection(force=force, from_stage=from_stage, to_stage=to_stage),
            tracking=tracking_uri,
            on_stage=_print_stage_event,
            on_progress=progress,
        )
    pipeline_summary(report)
    raise typer.Exit(report.exit_code)


def demo(
    out: Path = typer.Option(
        Path("demo_output"), "--out", "-o", callback=output_folder, help="Folder for everything."
    ),
    pipeline: Path | None = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="The demo pipeline (default: pipelines/demo.yaml here or in the source tree).",
    ),
    train_cases: int = typer.Option(14, min=2, help="Training phantoms (some validate)."),
    heldout_cases: int = typer.Option(6, min=1, help="Held-out phantoms to predict and score."),
    seed: int = typer.Option(0, help="Seed of the phantom generator."),
    force: bool = typer.Option(False, "--force", help="Run every stage again."),
    tracking_uri: str | None = tracking_uri_option(
        "MLflow tracking URI (default: SQLite in OUT/mlruns)."
    ),
) -> None:
    """End-to-end demo on synthetic CT phantoms written as real DICOM series.

    Generates training and held-out phantoms, then runs the demo pipeline: ingest, plan,
    preprocess, train a 3D U-Net on the CPU for a few minutes, register it in MLflow,
    batch-predict the held-out series (label maps, DICOM SEG, volumes) and evaluate.
    """
    import time

    from medseg.demo.run import run_demo

    started = time.perf_counter()
    with phase_progress() as progress:
        report = run_demo(
            out,
            pipeline=pipeline or _default_demo_pipeline(),
            n_train=train_cases,
            n_heldout=heldout_cases,
            seed=seed,
            tracking=tracking_uri,
            force=force,
            on_stage=_print_stage_event,
            on_progress=progress,
        )
    pipeline_summary(report)
    demo_summary(report, seconds=time.perf_counter() - started)
    raise typer.Exit(report.exit_code)


def _default_demo_pipeline() -> Path:
    for candidate in (
        Path("pipelines/demo.yaml"),
        Path(__file__).resolve().parents[2] / "pipelines" / "demo.yaml",  # source checkout
    ):
        if candidate.is_file():
            return candidate
    raise typer.BadParameter(
        "pipelines/demo.yaml not found here; give --pipeline PATH", param_hint="--pipeline"
    )


def demo_summary(report: PipelineReport, *, seconds: float) -> None:
    """Per-structure Dice and volumes on the held-out phantoms, and where everything is."""
    evaluation = next((r for r in report.records if r.kind == "evaluate"), None)
    if evaluation is None or evaluation.status != "done":
        console.print("[bold red]The demo did not reach the evaluation.")
        return
    table = Table(title="Held-out phantoms: mean over cases")
    for column in ("structure", "Dice", "HD95 (mm)", "volume predicted (mL)", "reference (mL)"):
        table.add_column(column, justify="right" if column != "structure" else "left")
    for name, values in evaluation.summary.get("structures", {}).items():
        table.add_row(
            name,
            metric_cell(values.get("dice"), 3),
            metric_cell(values.get("hd95_mm"), 1),
            metric_cell(values.get("volume_prediction_ml"), 1),
            metric_cell(values.get("volume_reference_ml"), 1),
        )
    console.print(table)
    console.print(
        f"Mean Dice {evaluation.summary.get('mean Dice')} over "
        f"{evaluation.summary.get('cases')} held-out phantoms; total {seconds / 60:.1f} min"
    )
    console.print(f"Report: {report.provided('report')}")
    console.print(
        f"Per-scan outputs (label maps, DICOM SEG, volumes): {report.provided('predictions')}"
    )
    console.print(f"Model: {report.provided('model_uri')} in {report.tracking_uri}")


def _print_stage_event(stage: str, status: str, record: StageRecord | None) -> None:
    style = _STATUS_STYLE.get(status, "")
    detail = ""
    if record is not None and status == "failed":
        detail = f": {record.error}"
    elif record is not None and record.seconds:
        detail = f" ({record.seconds:.1f} s)"
    console.print(f"[{style}]{status:>8}[/{style}] {stage}{detail}")


def pipeline_summary(report: PipelineReport) -> None:
    """One row per stage, then problems, and where to look in MLflow."""
    table = Table(title=f"Pipeline {report.name}")
    for column in ("stage", "status", "seconds", "problems", "result"):
        table.add_column(column, overflow="fold")
    for record in report.records:
        status = "skipped" if record.stage in report.skipped else record.status
        table.add_row(
            record.stage,
            f"[{_STATUS_STYLE.get(status, '')}]{status}",
            f"{record.seconds:.1f}",
            str(len(record.problems)),
            record.error or _short(record.summary),
        )
    console.print(table)
    for record in report.records:
        for problem in record.problems[:20]:
            console.print(f"[yellow]{record.stage}[/yellow]: {problem}")
    console.print(f"Stage folders: {report.work_dir}")
    console.print(f"MLflow parent run: {report.run_id} ({report.tracking_uri})")
    console.print(f"Open the MLflow UI: {mlflow_ui_command(report.tracking_uri)}")


def mlflow_ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on ``uri``."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri} --port 5000  (then open http://127.0.0.1:5000)"


def _short(summary: dict[str, Any]) -> str:
    parts = []
    for key, value in summary.items():
        if isinstance(value, dict):
            continue  # nested details (per structure) are in the reports
        parts.append(f"{key}: {value}")
    return "; ".join(parts)
