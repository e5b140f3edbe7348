"""The command line's error policy: one line ``error: <where>: <what>``, exit 2, no traceback.

Every command's options and paths are checked while the arguments are parsed, before any
work: a value out of range or not among the choices, an input that does not exist, an output
folder that cannot be written (a path through a regular file: refused even for root).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from medseg.cli import app
from tests.phantoms import write_phantom_nifti


def run_cli(*arguments: object):
    """``medseg ARGUMENTS`` in this process (the root command applies the error policy)."""
    return CliRunner().invoke(app, [str(a) for a in arguments], prog_name="medseg")


def one_error_line(output: str) -> str:
    """The output's only line, which must be ``error: ...`` (no traceback)."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: "), output
    assert "Traceback" not in output
    return lines[0]


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Inputs for every command: a phantom scan and its label map, and bad ones."""
    monkeypatch.chdir(tmp_path)  # MLflow's default store, if anything asks for one
    scans, labels, empty = tmp_path / "scans", tmp_path / "labels", tmp_path / "empty"
    for folder in (scans, labels, empty):
        folder.mkdir()
    write_phantom_nifti(scans / "case.nii.gz", label_path=labels / "case.nii.gz")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad.yaml").write_text("a: [\n")
    (tmp_path / "pipeline.yaml").write_text(
        "name: p\nstages:\n  - {stage: ingest, input: scans}\n  - {stage: plan}\n"
    )
    return {
        "tmp": tmp_path,
        "scan": scans / "case.nii.gz",
        "scans": scans,
        "labels": labels,
        "empty": empty,
        "blocked": a_file / "out",  # cannot be created: its parent is a file
        "missing": tmp_path / "missing",
        "bad_json": tmp_path / "bad.json",
        "bad_yaml": tmp_path / "bad.yaml",
        "pipeline": tmp_path / "pipeline.yaml",
    }


OPTION_AND_PATH_ERRORS = [  # (arguments, where, what)
    # ingest
    ("ingest {scans} --out {tmp}/i --labels {missing}", "medseg ingest --labels", "does not exist"),
    ("ingest {missing} --out {tmp}/i", "medseg ingest INPUT_DIR", "does not exist"),
    ("ingest {scans} --out {blocked}", "medseg ingest --out", "a-file is a file, not a folder"),
    (
        "ingest {scans} --out {tmp}/i --workers 0",
        "medseg ingest --workers",
        "greater than or equal to 1",
    ),
    # import-dataset
    (
        "import-dataset {tmp} --out {tmp}/m.jsonl --val-fraction 1.5",
        "medseg import-dataset --val-fraction",
        "1.5 is not in [0, 1)",
    ),
    (
        "import-dataset {tmp} --out {tmp}/m.jsonl --test-fraction -0.1",
        "medseg import-dataset --test-fraction",
        "-0.1 is not in [0, 1)",
    ),
    (
        "import-dataset {tmp} --out {tmp}/m.jsonl --val-fraction 0.6 --test-fraction 0.5",
        "medseg import-dataset --val-fraction + --test-fraction",
        "no share for training",
    ),
    (
        "import-dataset {tmp} --out {tmp}/m.jsonl --label-names liver",
        "medseg import-dataset --label-names",
        "expected VALUE=NAME pairs",
    ),
    (
        "import-dataset {tmp} --out {blocked}/m.jsonl",
        "medseg import-dataset --out",
        "a-file is a file, not a folder",
    ),
    (
        "import-dataset {tmp} --out {tmp}/m.jsonl --data-root {missing}",
        "medseg import-dataset --data-root",
        "does not exist",
    ),
    # validate-manifest
    ("validate-manifest {missing}", "medseg validate-manifest MANIFEST", "does not exist"),
    (
        "validate-manifest {bad_json} --data-root {missing}",
        "medseg validate-manifest --data-root",
        "does not exist",
    ),
    # plan
    (
        "plan {bad_json} --out {tmp}/plan.json --workers 0",
        "medseg plan --workers",
        "greater than or equal to 1",
    ),
    (
        "plan {bad_json} --out {blocked}/plan.json",
        "medseg plan --out",
        "a-file is a file, not a folder",
    ),
    ("plan {bad_json} --out {empty}", "medseg plan --out", "is a folder, not a file"),
    (
        "plan {bad_json} --out {tmp}/plan.json --config {missing}",
        "medseg plan --config",
        "does not exist",
    ),
    # preprocess
    (
        "preprocess {bad_json} --plan {bad_json} --out {tmp}/c --workers 0",
        "medseg preprocess --workers",
        "greater than or equal to 1",
    ),
    (
        "preprocess {bad_json} --plan {bad_json} --out {blocked}",
        "medseg preprocess --out",
        "a-file is a file, not a folder",
    ),
    # train
    (
        "train -m {bad_json} -p {bad_json} --run-dir {tmp}/run --epochs 0",
        "medseg train --epochs",
        "greater than or equal to 1",
    ),
    (
        "train -m {bad_json} -p {bad_json} --run-dir {tmp}/run --max-minutes 0",
        "medseg train --max-minutes",
        "0 is not in (0, inf)",
    ),
    (
        "train -m {bad_json} -p {bad_json} --run-dir {tmp}/run --max-minutes nan",
        "medseg train --max-minutes",
        "nan is not in (0, inf)",
    ),
    (
        "train -m {bad_json} -p {bad_json} --run-dir {tmp}/run --config {missing}",
        "medseg train --config",
        "does not exist",
    ),
    (
        "train -m {bad_json} -p {bad_json} --run-dir {tmp}/run --cache {blocked}",
        "medseg train --cache",
        "a-file is a file, not a folder",
    ),
    # predict
    (
        "predict {scan} --model m --out {tmp}/o --overlap 1.5",
        "medseg predict --overlap",
        "1.5 is not in [0, 1)",
    ),
    (
        "predict {scan} --model m --out {tmp}/o --overlap 1",
        "medseg predict --overlap",
        "1 is not in [0, 1)",
    ),
    (
        "predict {scan} --model m --out {tmp}/o --overlap nan",
        "medseg predict --overlap",
        "nan is not in [0, 1)",
    ),
    (
        "predict {scan} --model m --out {tmp}/o --batch-size 0",
        "medseg predict --batch-size",
        "greater than or equal to 1",
    ),
    (
        "predict {scan} --model m --out {tmp}/o --backend tensorrt",
        "medseg predict --backend",
        "'tensorrt' is not one of 'auto', 'torch', 'onnxruntime', 'openvino'",
    ),
    (
        "predict {scan} --model m --out {tmp}/o --precision fp8",
        "medseg predict --precision",
        "'fp8' is not one of 'auto', 'fp32', 'bf16'",
    ),
    (
        "predict {scan} --model m --out {tmp}/o --backend torch --precision bf16",
        "medseg predict --precision",
        "bf16 needs --backend openvino (not torch)",
    ),
    (
        "predict {scan} --model m --out {tmp}/o --keep-largest liver",
        "medseg predict --keep-largest",
        'expected "all" or structure values',
    ),
    (
        "predict {scan} --model m --out {blocked}",
        "medseg predict --out",
        "a-file is a file, not a folder",
    ),
    ("predict {scan} --model m --out {scan}", "medseg predict --out", "is a file, not a folder"),
    ("predict {missing} --model m --out {tmp}/o", "medseg predict INPUT_PATH", "does not exist"),
    # batch
    (
        "batch {scans} --model m --out {tmp}/o --workers 0",
        "medseg batch --workers",
        "greater than or equal to 1",
    ),
    (
        "batch {scans} --model m --out {tmp}/o --overlap -0.1",
        "medseg batch --overlap",
        "-0.1 is not in [0, 1)",
    ),
    (
        "batch {scans} --model m --out {tmp}/o --batch-size 0",
        "medseg batch --batch-size",
        "greater than or equal to 1",
    ),
    (
        "batch {scans} --model m --out {tmp}/o --backend tensorrt",
        "medseg batch --backend",
        "is not one of",
    ),
    (
        "batch {scans} --model m --out {blocked}",
        "medseg batch --out",
        "a-file is a file, not a folder",
    ),
    ("batch --model m --out {tmp}/o", "medseg batch SCANS_ROOT", "give SCANS_ROOT or --from-pacs"),
    # batch-summary
    ("batch-summary {missing}", "medseg batch-summary OUT", "does not exist"),
    ("batch-summary {labels}", "medseg batch-summary OUT", "no per-scan records"),
    # evaluate
    (
        "evaluate {labels} {labels} --out {tmp}/report --tolerance-mm 0",
        "medseg evaluate --tolerance-mm",
        "0 is not in (0, inf)",
    ),
    (
        "evaluate {labels} {labels} --out {tmp}/report --tolerance-mm -1",
        "medseg evaluate --tolerance-mm",
        "-1 is not in (0, inf)",
    ),
    (
        "evaluate {labels} {labels} --out {tmp}/report --labels {missing}",
        "medseg evaluate --labels",
        "does not exist",
    ),
    (
        "evaluate {labels} {labels} --out {tmp}/report --images {missing}",
        "medseg evaluate --images",
        "does not exist",
    ),
    (
        "evaluate {labels} {labels} --out {blocked}",
        "medseg evaluate --out",
        "a-file is a file, not a folder",
    ),
    ("evaluate {missing} {labels} --out {tmp}/r", "medseg evaluate PREDICTIONS", "does not exist"),
    # run
    ("run {missing}", "medseg run PIPELINE", "does not exist"),
    ("run {pipeline} --data-root {missing}", "medseg run --data-root", "does not exist"),
    (
        "run {pipeline} --work-dir {blocked}",
        "medseg run --work-dir",
        "a-file is a file, not a folder",
    ),
    # demo
    ("demo --out {blocked}", "medseg demo --out", "a-file is a file, not a folder"),
    (
        "demo --out {tmp}/d --train-cases 1",
        "medseg demo --train-cases",
        "greater than or equal to 2",
    ),
    ("demo --out {tmp}/d --pipeline {missing}", "medseg demo --pipeline", "does not exist"),
    # pacs
    ("pacs echo --config {missing}", "medseg pacs echo --config", "does not exist"),
    (
        "pacs pull --config {bad_yaml} --out {blocked}",
        "medseg pacs pull --out",
        "a-file is a file, not a folder",
    ),
    ("pacs push {missing} --config {bad_yaml}", "medseg pacs push BATCH_OUT", "does not exist"),
    (
        "pacs push {tmp} --config {bad_yaml} --incoming {missing}",
        "medseg pacs push --incoming",
        "does not exist",
    ),
    # the boundary itself
    ("predict {scan} --model m", "medseg predict", "Missing option '--out'"),
    ("no-such-command", "medseg", "No such command"),
]


@pytest.mark.parametrize(
    ("arguments", "where", "what"),
    OPTION_AND_PATH_ERRORS,
    ids=[f"{row[1]}: {row[2]}" for row in OPTION_AND_PATH_ERRORS],
)
def test_a_bad_option_or_path_is_one_line_naming_the_option_and_exit_code_2(
    paths: dict[str, Path], arguments: str, where: str, what: str
) -> None:
    result = run_cli(*arguments.format(**paths).split())
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert line.startswith(f"error: {where}: "), line
    assert what in line


def test_a_medseg_error_is_one_line_and_its_traceback_only_under_verbose(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("{not json\n")
    quiet = run_cli("validate-manifest", manifest)
    assert quiet.exit_code == 2, quiet.output
    assert str(manifest) in one_error_line(quiet.output)
    verbose = run_cli("--verbose", "validate-manifest", manifest)
    assert verbose.exit_code == 2
    assert "Traceback" in verbose.output
    assert verbose.output.strip().splitlines()[-1].startswith("error: ")


def test_a_bug_keeps_its_traceback_and_is_not_exit_code_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("medseg.manifest_validation.validate_manifest", broken)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("")
    result = run_cli("validate-manifest", manifest)
    assert result.exit_code == 1
    assert isinstance(result.exception, ZeroDivisionError)
    assert "error: " not in result.output
