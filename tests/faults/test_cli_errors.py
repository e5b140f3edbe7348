"""The command line's error policy: one line ``error: <where>: <what>``, exit 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from medseg.cli import app


def _run(*arguments: object):
    return CliRunner().invoke(app, [str(a) for a in arguments], prog_name="medseg")


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: "), output
    assert "Traceback" not in output
    return lines[0]


@pytest.mark.parametrize(
    ("arguments", "where", "what"),
    [
        (["batch", "{scan}", "--model", "m", "--out", "o", "--workers", "0"],
         "medseg batch --workers", "greater than or equal to 1"),
        (["predict", "{scan}", "--model", "m"], "medseg predict", "Missing option '--out'"),
        (["no-such-command"], "medseg", "No such command"),
    ],
)  # fmt: skip
def test_usage_errors_are_one_line_with_exit_code_2(
    tmp_path: Path, arguments: list[str], where: str, what: str
) -> None:
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"")
    result = _run(*(a.format(scan=scan) for a in arguments))
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.output)
    assert line.startswith(f"error: {where}: ")
    assert what in line


def test_a_medseg_error_is_one_line_and_its_traceback_only_under_verbose(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("{not json\n")
    quiet = _run("validate-manifest", manifest)
    assert quiet.exit_code == 2, quiet.output
    assert str(manifest) in _one_error_line(quiet.output)
    verbose = _run("--verbose", "validate-manifest", manifest)
    assert verbose.exit_code == 2
    assert "Traceback" in verbose.output
    assert verbose.output.strip().splitlines()[-1].startswith("error: ")
