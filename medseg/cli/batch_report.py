"""What ``medseg batch`` and ``medseg batch-summary`` print: the failed scans, the totals of a
shard and where its summary files are."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from medseg.cli.render import console

if TYPE_CHECKING:
    from medseg.batch.runner import BatchReport
    from medseg.batch.summary import SummaryFiles


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
    if report.ensemble_members:
        console.print(f"model: an ensemble of {report.ensemble_members} members")
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
