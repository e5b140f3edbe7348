"""No silent skips: the real reference data fixture, one summary line, and strict mode.

A pytest plugin (``pytest_plugins`` in ``tests/conftest.py``):

* ``shared_data``: the project's shared data folder (``../shared/data`` beside the repository,
  or ``$MEDSEG_SHARED_DATA``). Only tests of equality with outside references use it
  (dcm2niix/dicom2nifti, TotalSegmentator, MSD hippocampus); every component test runs on
  phantoms the tests generate. A folder that does not exist or is empty is absent: the tests
  that need it are not run, and the run ends with ONE line counting them and saying where the
  data must be put, instead of a skip line each.
* ``MEDSEG_TESTS_STRICT=1`` (set by ``.ci/run``) turns every skip into a failure: a missing
  shared data folder, a ``pytest.importorskip`` of an optional package (onnx, onnxruntime,
  openvino), a ``pytest.skip`` or skip marker, and a module skipped at collection.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

STRICT_VARIABLE = "MEDSEG_TESTS_STRICT"
DATA_VARIABLE = "MEDSEG_SHARED_DATA"
DEFAULT_SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NO_SHARED_DATA = "without shared data"  # the status of tests that need the absent data
_NEEDS_SHARED_DATA = "medseg_needs_shared_data"  # user property marking their skip reports


class SharedDataMissing(pytest.skip.Exception):
    """The shared data folder is absent (a skip, counted apart from the others)."""


def strict() -> bool:
    """Whether every skip is a failure (``MEDSEG_TESTS_STRICT`` set to anything but 0/empty)."""
    return os.environ.get(STRICT_VARIABLE, "") not in ("", "0")


def shared_data_root() -> Path:
    """``$MEDSEG_SHARED_DATA`` if set, else ``../shared/data`` beside the repository."""
    return Path(os.environ.get(DATA_VARIABLE) or DEFAULT_SHARED_DATA)


def _present(root: Path) -> bool:
    return root.is_dir() and any(root.iterdir())


def _how_to_get_it(root: Path) -> str:
    return (
        f"the project's shared data folder is not at {root}: put it beside the repository as "
        f"../shared/data (its README.md lists the sources), or set {DATA_VARIABLE} to it"
    )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder with the real public references (MSD, TotalSegmentator...)."""
    root = shared_data_root()
    if not _present(root):
        raise SharedDataMissing(_how_to_get_it(root))
    return root


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    if not report.skipped or hasattr(report, "wasxfail"):
        return report
    if strict():
        _fail_instead(report)
    elif call.excinfo is not None and call.excinfo.errisinstance(SharedDataMissing):
        report.user_properties.append((_NEEDS_SHARED_DATA, True))
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> pytest.CollectReport:
    report = yield
    if report.skipped and strict():
        _fail_instead(report)
    return report


def _fail_instead(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Make a skip report a failure that still says why the test was skipped."""
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ").removeprefix(f"{__name__}.")
    reason = reason.removeprefix(f"{SharedDataMissing.__name__}: ")
    report.outcome = "failed"
    report.longrepr = f"{STRICT_VARIABLE}=1 makes every skip a failure; skipped: {reason}"


def pytest_report_teststatus(report: pytest.TestReport) -> tuple[str, str, str] | None:
    """Tests without the shared data get their own status: no ``s`` and no skip line each."""
    properties = getattr(report, "user_properties", ())  # collection reports have none
    if report.skipped and any(name == _NEEDS_SHARED_DATA for name, _ in properties):
        return NO_SHARED_DATA, "", "NO SHARED DATA"
    return None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line for every test that needed the absent shared data."""
    count = len(terminalreporter.stats.get(NO_SHARED_DATA, []))
    if count:
        terminalreporter.write_line(
            f"{count} real-reference test{'s' * (count != 1)} not run: "
            f"{_how_to_get_it(shared_data_root())}",
            yellow=True,
            bold=True,
        )
