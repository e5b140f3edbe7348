"""Bad files and unknown models are user errors: one line naming the file or URI, exit 2.

Each of these printed a traceback of a foreign exception before (MlflowException, pydantic's
ValidationError, yaml's ParserError) or reported success on nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.faults.test_cli_errors import one_error_line, run_cli
from tests.phantoms import write_phantom_nifti


@pytest.fixture
def scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # MLflow's default store, if anything asks for one
    return write_phantom_nifti(tmp_path / "scan.nii.gz")


def _model_folder(tmp_path: Path, mlmodel: str | None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    if mlmodel is not None:
        (folder / "MLmodel").write_text(mlmodel)
    return folder


@pytest.mark.parametrize(
    ("mlmodel", "what"),
    [
        (None, 'cannot load the model: Could not find an "MLmodel" configuration file'),
        ("{not: yaml", "cannot load the model: ParserError: while parsing a flow mapping"),
        ("flavors: {}\n", 'cannot load the model: Model does not have the "python_function"'),
    ],
    ids=["no MLmodel", "MLmodel not YAML", "not a pyfunc model"],
)
def test_predict_with_a_model_folder_that_does_not_load_names_it(
    scan: Path, tmp_path: Path, mlmodel: str | None, what: str
) -> None:
    model = _model_folder(tmp_path, mlmodel)
    result = run_cli("predict", scan, "--model", model, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert line.startswith(f"error: {model}: "), line
    assert what in line
    assert not (tmp_path / "out").exists()


def test_predict_with_a_model_that_does_not_exist_names_the_uri(scan: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    result = run_cli("predict", scan, "--model", missing, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert one_error_line(result.output).startswith(f"error: {missing}: cannot load the model")


def test_predict_with_an_unknown_registered_model_names_the_uri(scan: Path, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(store).search_experiments()  # an existing store (creating one logs lines)
    result = run_cli(
        "predict", scan, "--model", "models:/liver/3", "--out", tmp_path / "out",
        "--tracking-uri", store,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert line.startswith("error: models:/liver/3: cannot load the model: "), line
    assert "liver" in line.removeprefix("error: models:/liver/3")


@pytest.mark.parametrize(
    ("plan_text", "what"),
    [
        ("{not json", "Invalid JSON"),
        (json.dumps({"target_spacing": "2 mm"}), "target_spacing: Input should be a valid array"),
    ],
    ids=["not JSON", "not a plan"],
)
@pytest.mark.parametrize("command", ["preprocess", "train"])
def test_a_bad_plan_file_is_named_with_its_problem(
    scan: Path, tmp_path: Path, command: str, plan_text: str, what: str
) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(plan_text)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("")
    arguments = {
        "preprocess": ["preprocess", manifest, "--plan", plan, "--out", tmp_path / "cache"],
        "train": ["train", "-m", manifest, "-p", plan, "--cache", tmp_path / "cache"],
    }[command]
    result = run_cli(*arguments)
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert line.startswith(f"error: {plan}: "), line
    assert what in line
    assert not (tmp_path / "cache").exists()


def test_evaluate_with_a_bad_labels_json_names_it(tmp_path: Path) -> None:
    labels = tmp_path / "labels.json"
    labels.write_text('{"1": "liver",')
    reference = write_phantom_nifti(tmp_path / "ref.nii.gz")
    result = run_cli("evaluate", reference, reference, "--out", tmp_path / "r", "--labels", labels)
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert line.startswith(f"error: {labels}: expected label names"), line


def test_evaluate_against_a_folder_without_references_is_refused(tmp_path: Path) -> None:
    predictions, references = tmp_path / "pred", tmp_path / "ref"
    predictions.mkdir()
    references.mkdir()
    write_phantom_nifti(predictions / "case.nii.gz")
    result = run_cli("evaluate", predictions, references, "--out", tmp_path / "report")
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert line == f"error: {references}: no label maps (<case>.nii.gz or <case>/<case>.nii.gz)"
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("connection: [\n", "cannot read YAML"),
        ("filters: {}\n", "connection: Field required"),
    ],
    ids=["not YAML", "no connection"],
)
def test_a_bad_pacs_file_is_named_by_the_error_boundary(
    tmp_path: Path, text: str, what: str
) -> None:
    pacs_file = tmp_path / "pacs.yaml"
    pacs_file.write_text(text)
    result = run_cli("pacs", "echo", "--config", pacs_file)
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert line.startswith(f"error: {pacs_file}: "), line
    assert what in line


def test_batch_summary_refuses_a_folder_that_no_batch_wrote(tmp_path: Path) -> None:
    write_phantom_nifti(tmp_path / "scan.nii.gz")
    result = run_cli("batch-summary", tmp_path)
    assert result.exit_code == 2, result.output
    assert "no per-scan records" in one_error_line(result.output)
    assert not (tmp_path / "summary.csv").exists()


def test_evaluate_into_an_unknown_mlflow_run_is_refused_before_any_work(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(store).search_experiments()
    reference = write_phantom_nifti(tmp_path / "ref.nii.gz")
    result = run_cli(
        "evaluate", reference, reference, "--out", tmp_path / "report",
        "--run-id", "0123abcd", "--tracking-uri", store,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert one_error_line(result.output) == "error: run 0123abcd: Run with id=0123abcd not found"
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize(
    ("arguments", "what"),
    [
        (["plan", "{manifest}", "--out", "{tmp}/plan.json", "-c", "{scan}"], "cannot read YAML"),
        (["preprocess", "{manifest}", "--plan", "{scan}", "--out", "{tmp}/c"], "not a text file"),
        (["run", "{scan}"], "cannot read the pipeline"),
        (["pacs", "echo", "-c", "{scan}"], "cannot read YAML"),
        (["validate-manifest", "{scan}"], "cannot read manifest"),
        (["evaluate", "{scan}", "{scan}", "--out", "{tmp}/r", "--labels", "{scan}"], "label names"),
    ],
    ids=["plan config", "plan file", "pipeline", "pacs file", "manifest", "label names"],
)
def test_a_binary_file_given_as_a_text_file_is_named(
    scan: Path, tmp_path: Path, arguments: list[str], what: str
) -> None:
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("")
    places = {"scan": scan, "manifest": manifest, "tmp": tmp_path}
    result = run_cli(*(argument.format(**places) for argument in arguments))
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert line.startswith(f"error: {scan}: "), line
    assert what in line


def test_ingest_of_a_folder_without_scans_is_refused(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("no scans here")
    result = run_cli("ingest", tmp_path / "in", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output  # after the progress bars of the search
    assert result.output.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'in'}: no DICOM series or NIfTI, NRRD or MetaImage files found "
        "(1 other files)"
    )


def test_predict_on_a_folder_without_scans_is_refused(phantom_model: str, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    result = run_cli(
        "predict", tmp_path / "in", "--model", "models:/phantoms/1", "--out", tmp_path / "out",
        "--tracking-uri", phantom_model,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'in'}: no DICOM series or NIfTI, NRRD or MetaImage files found"
    )


def test_predict_keep_largest_of_a_structure_the_model_lacks_is_refused(
    phantom_model: str, scan: Path, tmp_path: Path
) -> None:
    result = run_cli(
        "predict", scan, "--model", "models:/phantoms/1", "--out", tmp_path / "out",
        "--tracking-uri", phantom_model, "--keep-largest", "1,9",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert one_error_line(result.output) == (
        "error: medseg predict --keep-largest: the model has no structure [9]; "
        "it has [1, 2, 3, 4, 5]"
    )
    assert not (tmp_path / "out").exists()
