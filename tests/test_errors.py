"""One hierarchy of exceptions in ``medseg/errors.py``, whose bases map to documented exit codes."""

from __future__ import annotations

import ast
import builtins
import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import medseg
from medseg import errors
from medseg.cli.errors import EXIT_SOME_FAILED, EXIT_USER_ERROR, MedsegGroup
from tests.faults.commands import run_medseg
from tests.faults.inputs import write_phantom_with
from tests.phantoms import write_phantom_nifti

PACKAGE = Path(medseg.__file__).parent
RELIABILITY = PACKAGE.parent / "docs" / "reliability.md"

# Exceptions that may live outside errors.py, and why.
ALLOWED_ELSEWHERE = {
    # Not an error: the stop signal, raised only by the handler beside it, a BaseException so
    # that the per-case ``except Exception`` of a batch never swallows it.
    ("shutdown.py", "ShutdownRequested"),
    # Private control flow: raised by the case checks of datasets.py, caught in the same module.
    ("datasets.py", "_Rejected"),
}
BASES = (errors.InputError, errors.ConfigError, errors.ServiceError, errors.CaseFailure)
# Documented bases that are caught, never raised as such.
ABSTRACT = {"MedsegError", "LocatedError", "InputError", "ServiceError", "CaseFailure", "PacsError"}


def _error_classes() -> dict[str, type[errors.MedsegError]]:
    return {
        name: value
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.MedsegError)
    }


def _exception_classes_outside_errors_py(package: Path = PACKAGE) -> set[tuple[str, str]]:
    """``(module path, class)`` of every class under ``package`` but errors.py deriving from an
    exception: builtin, from errors.py, or (transitively) from one found here."""
    known = {name for name, value in vars(builtins).items() if isinstance(value, type)}
    known = {name for name in known if issubclass(getattr(builtins, name), BaseException)}
    known |= set(_error_classes())
    classes = []
    for path in sorted(package.rglob("*.py")):
        if path == package / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(base).rsplit(".", 1)[-1] for base in node.bases}
                classes.append((path.relative_to(package).as_posix(), node.name, bases))
    found: set[tuple[str, str]] = set()
    grew = True
    while grew:  # a class deriving from one found here is an exception too
        grew = False
        for module, name, bases in classes:
            if (module, name) not in found and bases & (known | {n for _, n in found}):
                found.add((module, name))
                grew = True
    return found


def test_no_exception_class_is_defined_outside_errors_py() -> None:
    assert _exception_classes_outside_errors_py() == ALLOWED_ELSEWHERE


def test_the_scan_finds_exception_classes_outside_errors_py(tmp_path: Path) -> None:
    (tmp_path / "errors.py").write_text("class InputError(Exception):\n    pass\n")
    (tmp_path / "stage.py").write_text(
        "from medseg import errors\n\n"
        "class StrayError(errors.InputError):\n    pass\n\n"
        "class DerivedError(StrayError):\n    pass\n\n"
        "class Timeout(TimeoutError):\n    pass\n\n"
        "class Record:\n    pass\n"
    )
    assert _exception_classes_outside_errors_py(tmp_path) == {
        ("stage.py", "StrayError"),
        ("stage.py", "DerivedError"),
        ("stage.py", "Timeout"),
    }


@pytest.mark.parametrize("name", sorted(_error_classes()))
def test_every_error_is_a_documented_base_or_raised_somewhere(name: str) -> None:
    if name in ABSTRACT:
        assert any(issubclass(c, _error_classes()[name]) for c in _error_classes().values())
        return
    uses = re.compile(rf"\b{name}\(")
    raised = [
        path
        for path in PACKAGE.rglob("*.py")
        if path != PACKAGE / "errors.py" and uses.search(path.read_text(encoding="utf-8"))
    ]
    assert raised, f"{name} is never raised: remove it, or list it as a base"


@pytest.mark.parametrize("name", sorted(set(_error_classes()) - {"MedsegError", "LocatedError"}))
def test_every_error_has_exactly_one_base(name: str) -> None:
    error_class = _error_classes()[name]
    assert sum(issubclass(error_class, base) for base in BASES) == 1


def _documented_exit_codes() -> dict[str, tuple[str, str]]:
    """``base -> (exit in a command over many cases, exit when it stops the command)`` from the
    "Errors" table of docs/reliability.md."""
    text = RELIABILITY.read_text(encoding="utf-8")
    section = text.split("## Errors", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \|[^|]*\| ([^|]+) \| ([^|]+) \|$", section, flags=re.MULTILINE)
    return {base: (per_case, stopping) for base, per_case, stopping in rows}


def test_the_documented_bases_are_the_bases() -> None:
    assert set(_documented_exit_codes()) == {base.__name__ for base in BASES}


@pytest.mark.parametrize(
    "error",
    [
        errors.NonFiniteVoxelsError("scan.nii.gz", "2 NaN voxels"),
        errors.UnknownFormatError("unknown output format 'png'"),
        errors.TrackingUnavailableError("http://127.0.0.1:9", "not reachable"),
        errors.WorkerDiedError("worker process died"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_an_error_that_stops_a_command_exits_as_documented(error: errors.MedsegError) -> None:
    app = typer.Typer(cls=MedsegGroup)

    @app.command()
    def fail() -> None:
        raise error

    @app.command()
    def other() -> None:  # a second command keeps ``fail`` a subcommand
        pass

    result = CliRunner().invoke(app, ["fail"])
    (base,) = [b for b in BASES if isinstance(error, b)]
    assert str(result.exit_code) == _documented_exit_codes()[base.__name__][1] == "2"
    assert result.output.strip() == f"error: {error}"


def test_an_input_error_of_one_case_fails_that_case_only(tmp_path: Path) -> None:
    scans, out = tmp_path / "scans", tmp_path / "out"
    write_phantom_nifti(scans / "good.nii.gz")
    write_phantom_with(scans / "bad.nii.gz", nan=1)  # NonFiniteVoxelsError, an InputError
    result = run_medseg("ingest", scans, "--out", out, "--case-ids", "folder")
    assert str(result.exit_code) == _documented_exit_codes()["InputError"][0]
    assert result.exit_code == EXIT_SOME_FAILED != EXIT_USER_ERROR
    outcomes = json.loads((out / "ingest_report.json").read_text())["outcomes"]
    kinds = {o["source"]: o["kind"] for o in outcomes}
    assert kinds == {"good.nii.gz": "converted", "bad.nii.gz": "failed"}
