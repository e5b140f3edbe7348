"""The root ``medseg`` app: global options, the list of commands, the console script.

Each command lives in the module of its group (``medseg.cli.data``, ``...batch``...) and is
registered here, in the order ``medseg --help`` lists them.
"""

from __future__ import annotations

import logging

import typer

from medseg import __version__, shutdown
from medseg.cli import batch, data, ensemble, evaluate, pipeline, predict, preprocess, select, train
from medseg.cli.cross_validate import cross_validate
from medseg.cli.errors import MedsegGroup
from medseg.cli.pacs import pacs_app

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


app.command()(data.ingest)
app.command("import-dataset")(data.import_dataset)
app.command("validate-manifest")(data.validate_manifest)
app.command()(preprocess.plan)
app.command()(preprocess.preprocess)
app.command()(train.train)
app.command("cross-validate")(cross_validate)
app.command()(select.select)
app.command()(predict.predict)
app.command()(ensemble.ensemble)
app.command()(batch.batch)
app.command("batch-summary")(batch.batch_summary_command)
app.command()(evaluate.evaluate)
app.command("run")(pipeline.run)
app.add_typer(pacs_app, name="pacs")
app.command("demo")(pipeline.demo)


def main() -> None:
    """Entry point of the ``medseg`` console script."""
    try:
        app()
    except SystemExit as done:
        if shutdown.stopped_by() is not None:  # stopping: every second of grace counts
            shutdown.exit_now(done.code if isinstance(done.code, int) else 1)
        raise
