"""The skip policy (tests/skip_policy.py) on a generated test folder, run by a real pytest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
STRICT_MESSAGE = "MEDSEG_TESTS_STRICT=1 makes every skip a failure; skipped: "

TESTS = """
import pytest

def test_passes():
    pass

def test_reference_a(shared_data):
    assert (shared_data / "marker.txt").read_text() == "real"

def test_reference_b(shared_data):
    assert shared_data.is_dir()

def test_skips():
    pytest.skip("no bf16 on this CPU")

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_known_bug():
    assert False
"""
OPTIONAL_PACKAGE = """
import pytest

pytest.importorskip("medseg_no_such_package")

def test_needs_the_package():
    pass
"""


def _pytest(
    folder: Path, data: Path, *arguments: str, strict: bool = False
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MEDSEG_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPOSITORY), env.get("PYTHONPATH", "")])
    env["MEDSEG_SHARED_DATA"] = str(data)
    if strict:
        env["MEDSEG_TESTS_STRICT"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-ra", *arguments],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A test folder using the policy as tests/conftest.py does, and an empty data folder."""
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite/conftest.py").write_text('pytest_plugins = ["tests.skip_policy"]\n')
    (tmp_path / "suite/test_generated.py").write_text(TESTS)
    (tmp_path / "empty").mkdir()
    return tmp_path


@pytest.mark.parametrize("workers", [["-p", "no:xdist"], ["-n", "2"]], ids=["serial", "xdist"])
def test_absent_shared_data_is_one_line_and_other_skips_stay_visible(
    folder: Path, workers: list[str]
) -> None:
    (folder / "suite/test_optional.py").write_text(OPTIONAL_PACKAGE)
    result = _pytest(folder / "suite", folder / "empty", *workers)
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    summary = [line for line in lines if "real-reference tests not run" in line]
    assert summary == [
        f"2 real-reference tests not run: the project's shared data folder is not at "
        f"{folder / 'empty'}: put it beside the repository as ../shared/data (its README.md "
        "lists the sources), or set MEDSEG_SHARED_DATA to it"
    ]
    skip_lines = [line for line in lines if line.startswith("SKIPPED")]
    assert len(skip_lines) == 2, result.stdout  # the two other skips, each on its own line
    assert any("no bf16 on this CPU" in line for line in skip_lines)
    assert any("medseg_no_such_package" in line for line in skip_lines)
    assert "1 passed, 2 skipped, 1 xfailed, 2 without shared data" in lines[-1]


def test_present_shared_data_is_given_to_the_tests(folder: Path) -> None:
    data = folder / "data"
    data.mkdir()
    (data / "marker.txt").write_text("real")
    result = _pytest(folder / "suite", data, "-p", "no:xdist")
    assert result.returncode == 0, result.stdout
    assert "3 passed, 1 skipped, 1 xfailed" in result.stdout.splitlines()[-1]
    assert "real-reference tests not run" not in result.stdout


def test_strict_mode_fails_every_skip_and_keeps_expected_failures(folder: Path) -> None:
    result = _pytest(folder / "suite", folder / "empty", "-p", "no:xdist", strict=True)
    assert result.returncode == 1, result.stdout
    # a skip in a fixture fails the setup: an error, as any failing fixture
    assert "1 failed, 1 passed, 1 xfailed, 2 errors" in result.stdout.splitlines()[-1]
    failed = sorted(
        line.split(" - ")[0]
        for line in result.stdout.splitlines()
        if line.startswith(("FAILED", "ERROR"))
    )
    assert failed == [
        "ERROR test_generated.py::test_reference_a",
        "ERROR test_generated.py::test_reference_b",
        "FAILED test_generated.py::test_skips",
    ]
    assert f"{STRICT_MESSAGE}no bf16 on this CPU" in result.stdout
    assert f"{STRICT_MESSAGE}the project's shared data folder is not at" in result.stdout


def test_strict_mode_fails_a_module_skipped_at_collection(folder: Path) -> None:
    (folder / "suite/test_optional.py").write_text(OPTIONAL_PACKAGE)
    result = _pytest(folder / "suite", folder / "empty", "-n", "2", "test_optional.py", strict=True)
    assert result.returncode not in (0, 5), result.stdout
    assert f"{STRICT_MESSAGE}could not import 'medseg_no_such_package'" in result.stdout
    assert "1 error" in result.stdout.splitlines()[-1]
