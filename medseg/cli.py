"""The ``medseg`` command line: parse, call one function, print."""

from __future__ import annotations

import logging

import typer

from medseg import __version__

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


def main() -> None:
    """Entry point of the ``medseg`` console script."""
    app()
