"""``medseg pacs echo|query|pull|push``: talk to a PACS described by a YAML file.

Nothing here takes a password: the PACS file names the environment variable or secrets file
that holds it. Series are shown by their hashed keys unless ``--show-uids`` is given.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from medseg.cli.checks import output_folder
from medseg.cli.render import console

if TYPE_CHECKING:
    from medseg.pacs.config import PacsConfig
    from medseg.pacs.pull import PullReport
    from medseg.pacs.push import PushReport

pacs_app = typer.Typer(
    help="Pull studies from a PACS and push results back (DICOMweb or DIMSE).",
    no_args_is_help=True,
)

CONFIG_OPTION = typer.Option(
    ..., "--config", "-c", exists=True, dir_okay=False, help="PACS file (configs/pacs/*.yaml)."
)


def load_pacs(path: Path) -> PacsConfig:
    """The PACS file at ``path`` (refused with one line naming the file and key)."""
    from medseg.pacs.config import load_pacs_config

    return load_pacs_config(path)


@pacs_app.command()
def echo(config: Path = CONFIG_OPTION) -> None:
    """Check that the PACS answers with these settings and credentials."""
    from medseg.pacs.connect import connected

    settings = load_pacs(config)
    with connected(settings.connection) as client:
        client.echo()
    console.print(f"[green]{settings.connection.name} answers[/green]")


@pacs_app.command()
def query(
    config: Path = CONFIG_OPTION,
    show_uids: bool = typer.Option(False, "--show-uids", help="Print UIDs, not hashed keys."),
) -> None:
    """List the series the filter rules take (and count those they leave out)."""
    from medseg.pacs.connect import connected
    from medseg.pacs.filters import SeriesFilter
    from medseg.pacs.retry import with_retry
    from medseg.pacs.state import series_key

    settings = load_pacs(config)
    rules = SeriesFilter(settings.filters)
    with connected(settings.connection) as client:
        found = with_retry(lambda: client.find_series(rules.query()), settings.retry, what="search")
    taken, reasons = rules.select(found)
    table = Table(title=f"{len(taken)} of {len(found)} series match")
    names = [series.series_uid if show_uids else series_key(series.series_uid) for series in taken]
    # UIDs and keys whole on one line (copied into other tools); the other columns fold.
    table.add_column("series", no_wrap=True, min_width=max(map(len, names), default=6))
    for column in ("modality", "body part", "description", "study date", "images"):
        table.add_column(column, overflow="fold")
    for series, name in zip(taken, names, strict=True):
        day = series.study_date.isoformat() if series.study_date else ""
        images = "" if series.instances is None else str(series.instances)
        table.add_row(
            name, series.modality, series.body_part, series.series_description, day, images
        )
    console.print(table)
    _print_left_out(Counter(reasons))


def _print_left_out(reasons: Counter[str]) -> None:
    for reason, count in reasons.most_common():
        console.print(f"left out {count}: {reason}")


@pacs_app.command()
def pull(
    config: Path = CONFIG_OPTION,
    out: Path = typer.Option(
        ..., "--out", "-o", callback=output_folder, help="Folder of pulled series (one per key)."
    ),
) -> None:
    """Retrieve every matching series into OUT/<series key>/ (complete series only).

    Series already there are not retrieved again. Exit code 1 when any series failed.
    """
    from medseg.pacs.connect import connected
    from medseg.pacs.pull import pull as pull_series

    settings = load_pacs(config)
    with connected(settings.connection) as client:
        report = pull_series(client, settings, out)
    pull_summary(report)
    raise typer.Exit(1 if report.failed else 0)


@pacs_app.command()
def push(
    batch_out: Path = typer.Argument(..., exists=True, file_okay=False, help="A batch's OUT."),
    config: Path = CONFIG_OPTION,
    incoming: Path | None = typer.Option(
        None,
        exists=True,
        file_okay=False,
        help="Folder the source series were pulled into (for the overlay picture).",
    ),
) -> None:
    """Send the SEG, volume SR and overlay of every finished case not yet delivered.

    Exit code 1 when any case could not be delivered (see BATCH_OUT/.pacs/deliveries.jsonl;
    the next push retries it).
    """
    from medseg.pacs.connect import connected
    from medseg.pacs.push import push as push_results

    settings = load_pacs(config)
    with connected(settings.connection) as client:
        report = push_results(client, settings, batch_out, incoming=incoming)
    push_summary(report)
    raise typer.Exit(report.exit_code)


def pull_summary(report: PullReport) -> None:
    """What a pull did."""
    colour = "red" if report.failed else "green"
    console.print(
        f"[bold {colour}]pull: {report.matched} series match, {len(report.pulled)} pulled, "
        f"{len(report.present)} already here, {len(report.delivered)} already delivered, "
        f"{len(report.failed)} failed[/bold {colour}] in {report.seconds:.1f} s"
    )
    for failure in report.failed:
        console.print(f"[red]series {failure.series_key}: {failure.reason}[/red]")
    _print_left_out(report.left_out)


def push_summary(report: PushReport) -> None:
    """What a push did."""
    colour = "red" if report.failed else "green"
    console.print(
        f"[bold {colour}]push: {len(report.sent)} delivered, {len(report.already_sent)} "
        f"delivered before, {len(report.without_seg)} without a SEG (not DICOM), "
        f"{len(report.failed)} failed[/bold {colour}] in {report.seconds:.1f} s"
    )
    for failure in report.failed:
        console.print(f"[red]case {failure.case_id}: {failure.reason}[/red]")
