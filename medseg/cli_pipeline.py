"""``medseg run``: a pipeline file from the command line, with a stage-by-stage summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from medseg.cli_output import console

if TYPE_CHECKING:
    from medseg.pipeline.records import StageRecord
    from medseg.pipeline.runner import PipelineReport

_STATUS_STYLE = {"done": "green", "skipped": "cyan", "failed": "bold red", "running": "yellow"}


def run(
    pipeline: Path = typer.Argument(..., exists=True, dir_okay=False, help="pipelines/NAME.yaml"),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="Folder the pipeline's data paths are relative to."
    ),
    work_dir: Path | None = typer.Option(
        None, "--work-dir", help="Stage folders (default: runs/<pipeline name>)."
    ),
    from_stage: str | None = typer.Option(
        None, "--from", help="Run this stage and every later one even if up to date."
    ),
    to_stage: str | None = typer.Option(None, "--to", help="Stop after this stage."),
    force: bool = typer.Option(False, "--force", help="Run every stage even if up to date."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a stage option: STAGE.KEY=VALUE (repeatable)."
    ),
    tracking_uri: str | None = typer.Option(
        None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlruns SQLite)."
    ),
) -> None:
    """Run a pipeline: stages in order, each skipped when its inputs and config are unchanged.

    Exit code 0 when every stage succeeded without problems, 1 when a stage failed (later
    stages do not run) or some scans/cases failed inside a stage.
    """
    from medseg.cli_output import phase_progress
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
