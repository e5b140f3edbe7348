"""Rich rendering for the CLI: progress bars and summary tables (only the CLI imports this)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from medseg.ingest import IngestReport, OutcomeKind

if TYPE_CHECKING:  # heavy modules (torch) are imported only by the commands that need them
    from medseg.batch.runner import BatchReport
    from medseg.batch.summary import SummaryFiles
    from medseg.datasets import ImportReport
    from medseg.evaluate.stage import EvaluationReport
    from medseg.infer.stage import PredictReport
    from medseg.manifest_validation import ManifestValidation
    from medseg.preprocess.plan import Plan
    from medseg.preprocess.stage import PreprocessReport
    from medseg.train.loop import TrainResult

console = Console(stderr=False)


@contextmanager
def phase_progress() -> Iterator:
    """A progress bar per phase; yields a callback ``(phase, done, total)``."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        tasks: dict[str, int] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=total)
            progress.update(tasks[phase], completed=done, total=total)

        yield update


def ingest_summary(report: IngestReport) -> None:
    """Print converted, skipped and failed inputs as tables, then the totals."""
    done = report.of_kind(OutcomeKind.CONVERTED, OutcomeKind.UNCHANGED)
    if done:
        table = Table(title="Converted", show_lines=False)
        table.add_column("case_id", no_wrap=True)
        table.add_column("source", overflow="fold")
        for column in ("modality", "shape", "spacing (mm)", "label"):
            table.add_column(column, no_wrap=True)
        table.add_column("note", overflow="ellipsis", max_width=48)
        for outcome in sorted(done, key=lambda o: o.case_id or ""):
            record = outcome.record
            assert record is not None
            note = "unchanged (already ingested)" if outcome.kind is OutcomeKind.UNCHANGED else ""
            table.add_row(
                record.case_id,
                outcome.source or "",
                record.modality,
                "x".join(str(n) for n in record.shape),
                " x ".join(f"{v:.3g}" for v in record.spacing),
                "yes" if record.label else "",
                "; ".join(filter(None, [note, outcome.reason])),
            )
        console.print(table)
    for kind, title in ((OutcomeKind.SKIPPED, "Skipped"), (OutcomeKind.FAILED, "Failed")):
        rows = report.of_kind(kind)
        if not rows:
            continue
        table = Table(title=title)
        for column in ("source or case", "files", "reason"):
            table.add_column(column, overflow="fold")
        for outcome in rows:
            name = outcome.source or outcome.case_id or ""
            table.add_row(name, str(outcome.files), outcome.reason)
        console.print(table)
    counts = {kind: len(report.of_kind(kind)) for kind in OutcomeKind}
    totals = ", ".join(f"{counts[kind]} {kind.value}" for kind in OutcomeKind)
    console.print(
        f"[bold]{totals}[/bold] ({report.unreadable} unreadable files or folders); "
        f"{report.ignored_files} other files ignored, {report.links_not_followed} links to "
        f"folders searched already not followed (see ingest_report.json). "
        f"Manifest: {report.manifest_path}"
    )


def import_summary(report: ImportReport) -> None:
    """Print what a dataset import wrote, its splits, orphans and rejected pairs."""
    splits = ", ".join(f"{count} {split}" for split, count in report.split_counts.items())
    console.print(
        f"[bold]{len(report.records)} cases[/bold] ({report.layout} layout, modality "
        f"{report.modality}): {splits or 'no splits'} -> {report.manifest_path}; "
        f"{len(report.rejected)} pairs rejected, {len(report.orphans)} orphans left out"
    )
    console.print(f"labels: {report.label_names}")
    for title, rows in (
        ("Orphans (left out)", [(o.case_id, o.path, o.reason) for o in report.orphans]),
        ("Rejected pairs", [(p.case_id, p.kind.value, p.detail) for p in report.rejected]),
    ):
        if rows:
            table = Table(title=title)
            for column in ("case_id", "what", "why"):
                table.add_column(column, overflow="fold")
            for row in rows:
                table.add_row(*(str(value) for value in row))
            console.print(table)


def validation_summary(result: ManifestValidation) -> None:
    """Print a manifest check: OK, or a table of problems per case."""
    if result.ok:
        console.print(f"[green]{result.manifest_path}: {result.n_cases} cases, all valid[/green]")
        return
    table = Table(title=f"{result.manifest_path}: problems")
    for column in ("case_id", "problem", "detail"):
        table.add_column(column, overflow="fold")
    for problem in result.problems:
        table.add_row(problem.case_id, problem.kind.value, problem.detail)
    console.print(table)
    console.print(f"[red]{len(result.by_case())} of {result.n_cases} cases have problems[/red]")


def plan_summary(plan: Plan, path: object) -> None:
    """Print the plan's main choices."""
    table = Table(title=f"Plan -> {path}")
    table.add_column("choice")
    table.add_column("value", overflow="fold")
    table.add_row("cases fingerprinted", str(plan.fingerprint["n_cases"]))
    table.add_row(
        "modality / normalization", f"{plan.modality} / {plan.normalization.scheme.value}"
    )
    table.add_row("target spacing (mm)", " x ".join(f"{v:.3g}" for v in plan.target_spacing))
    table.add_row("median shape", "x".join(str(v) for v in plan.median_shape))
    for name, configuration in plan.configurations.items():
        table.add_row(
            f"{name} patch / batch",
            f"{'x'.join(str(v) for v in configuration.patch_size)} / {configuration.batch_size}"
            f" ({len(configuration.pool_strides)} poolings)",
        )
    table.add_row("labels", ", ".join(f"{k}: {v}" for k, v in plan.label_names.items()))
    console.print(table)


def preprocess_summary(report: PreprocessReport) -> None:
    """Print counts, mean time per case and failures."""
    from medseg.preprocess.stage import CaseStatus

    done = report.with_status(CaseStatus.DONE)
    failed = report.with_status(CaseStatus.FAILED)
    if failed:
        table = Table(title="Failed cases")
        table.add_column("case_id", no_wrap=True)
        table.add_column("reason", overflow="fold")
        for outcome in failed:
            table.add_row(outcome.case_id, outcome.reason)
        console.print(table)
    mean = sum(o.seconds for o in done) / len(done) if done else 0.0
    console.print(
        f"[bold]{len(done)} preprocessed[/bold] ({mean:.2f} s/case), "
        f"{len(report.with_status(CaseStatus.UNCHANGED))} unchanged, {len(failed)} failed -> "
        f"{report.cache_dir}"
    )


def train_summary(result: TrainResult) -> None:
    """Print where training stopped, the best validation Dice and where the model is."""
    state = result.state
    console.print(
        f"[bold]Training stopped by {result.stopped_by}[/bold] after {state.epoch} epochs, "
        f"{state.step} steps, {state.elapsed_seconds / 60:.1f} min; "
        f"best validation mean Dice {result.best_mean_dice:.4f}"
    )
    console.print(f"checkpoints: {result.best_checkpoint.parent}   MLflow run: {result.run_id}")
    if result.model_version is not None:
        console.print(f"registered model version {result.model_version}")


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


def batch_summary(report: BatchReport) -> None:
    """Print the failed scans of the shard, then its totals and where the summary is."""
    if report.failed:
        table = Table(title=f"Failed scans (shard {report.shard})")
        for column in ("case", "source", "error", "reason"):
            table.add_column(column, overflow="fold")
        for failure in report.failed:
            table.add_row(failure.case_id, failure.source or "", failure.error_type, failure.reason)
        console.print(table)
    seconds = [result.seconds for result in report.done]
    mean = f" ({sum(seconds) / len(seconds):.1f} s/scan)" if seconds else ""
    colour = "red" if report.failed else "green"
    console.print(
        f"[bold {colour}]shard {report.shard}: {len(report.done)} done{mean}, "
        f"{len(report.skipped)} already complete, "
        + (f"{len(report.elsewhere)} done by another batch run, " if report.elsewhere else "")
        + f"{len(report.failed)} failed[/bold {colour}] "
        f"of {report.scans_in_shard} scans in the shard ({report.scans_found} found, of which "
        f"{report.unreadable} unreadable; {report.ignored_files} other files ignored, "
        f"{report.links_not_followed} links to folders searched already not followed) "
        f"in {report.seconds_total:.1f} s"
    )
    if report.summary is not None:
        batch_files_summary(report.summary)
    if report.tracking.run_id and not report.tracking.warning:
        console.print(f"MLflow run: {report.tracking.run_id}")
    if report.tracking.warning:
        console.print(f"[yellow]{report.tracking.warning}[/yellow]")


def batch_files_summary(files: SummaryFiles) -> None:
    """Where a batch's summary and failure list are, with their counts."""
    console.print(
        f"summary ({files.done} done, {files.failed} failed in the folder): {files.csv}; "
        f"failures: {files.failures}"
    )


_EVALUATION_COLUMNS = {
    "Dice": "dice",
    "IoU": "iou",
    "HD95 mm": "hd95_mm",
    "NSD": "nsd",
    "volume ref mL": "volume_reference_ml",
    "volume pred mL": "volume_prediction_ml",
}


def metric_cell(value: float | None, digits: int = 4) -> str:
    """A metric as the reports write it: empty when undefined (see medseg.evaluate.report)."""
    from medseg.evaluate.report import defined

    return "" if defined(value) is None else f"{value:.{digits}f}"


def evaluation_summary(report: EvaluationReport, paths: dict) -> None:
    """Per-structure means (empty cells: undefined) and where the reports are."""
    from medseg.evaluate.report import UNDEFINED_RULE

    table = Table(
        title=f"Evaluation of {len(report.cases)} cases", caption=f"Empty cell = {UNDEFINED_RULE}"
    )
    table.add_column("structure")
    for column in _EVALUATION_COLUMNS:
        table.add_column(column)
    for name, values in report.structure_means().items():
        table.add_row(name, *(metric_cell(values[m]) for m in _EVALUATION_COLUMNS.values()))
    console.print(table)
    for case, reason in report.failed.items():
        console.print(f"[red]{case}: {reason}[/red]")
    for case in report.missing_prediction:
        console.print(f"[red]{case}: no prediction[/red]")
    for case in report.missing_reference:
        console.print(f"[red]{case}: no reference[/red]")
    problems = len(report.failed) + len(report.missing_prediction) + len(report.missing_reference)
    console.print(
        f"[bold]{len(report.cases)} cases evaluated, {len(report.failed)} failed, "
        f"{len(report.missing_prediction)} without prediction, "
        f"{len(report.missing_reference)} without reference[/bold]",
        style="red" if problems else "green",
    )
    mean_dice = metric_cell(report.overall_mean("dice"))
    console.print(
        (f"[bold]mean Dice {mean_dice}[/bold]; " if mean_dice else "") + f"report: {paths['html']}"
    )
