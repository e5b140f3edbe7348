"""The command line run in-process for the fault tests, with the phantom model of
``conftest.phantom_model``."""

from __future__ import annotations

from typer.testing import CliRunner, Result

from medseg.cli import app

PHANTOM_MODEL_URI = "models:/phantoms/1"  # registered by the phantom_model fixture


def run_medseg(*arguments: object) -> Result:
    """``medseg ARGUMENTS`` in this process (output and exit code in the result)."""
    return CliRunner().invoke(app, [str(a) for a in arguments], prog_name="medseg")


def said(result: Result) -> str:
    """What the command printed, as one line (the console wraps long lines)."""
    return " ".join(result.output.split())


def model_options(tracking_uri: str) -> list[str]:
    """``--model`` and ``--tracking-uri`` of the phantom model in the store ``tracking_uri``."""
    return ["--model", PHANTOM_MODEL_URI, "--tracking-uri", tracking_uri]
