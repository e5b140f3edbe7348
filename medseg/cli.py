"""The ``medseg`` command line: parse, call one function, print."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from medseg import __version__
from medseg.ingest.case_ids import CaseIdScheme

app = typer.Typer(
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
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (volumes + manifest)."),
    labels: Path | None = typer.Option(
        None, "--labels", help="Folder of <case_id>.nii.gz label maps to pair with the scans."
    ),
    case_ids: CaseIdScheme = typer.Option(
        CaseIdScheme.HASH, "--case-ids", help="hash: anonymous ids; folder: series folder names."
    ),
    workers: int | None = typer.Option(None, help="Decoder processes (default: all cores)."),
    force: bool = typer.Option(False, "--force", help="Convert again even if unchanged."),
) -> None:
    """Convert every DICOM series and NIfTI file under INPUT_DIR into canonical volumes.

    Exit code 0 when every scan converted (skipped non-scan files are not failures),
    1 when some failed (the others are still written).
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
            on_progress=progress,
        )
    ingest_summary(report)
    raise typer.Exit(report.exit_code)


def main() -> None:
    """Entry point of the ``medseg`` console script."""
    app()
