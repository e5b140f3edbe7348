"""The registered model served by a real ``mlflow models serve`` answers whole scans as
``medseg predict`` does (label map and volumes), and still answers preprocessed tensors."""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from medseg.cli import app
from medseg.io.nifti import read_nifti
from tests.mlflow_server import (
    mlflow_server,  # noqa: F401
    running_model_server,
)
from tests.packaged_model import log_tiny_unet
from tests.phantoms import write_phantom_nifti
from tests.tiny_dataset import TinyDataset

# In the slow suite (CI runs it): a tracking server and a model server start, about 40 s.
pytestmark = pytest.mark.slow

MODEL = "served-phantom"
URI = f"models:/{MODEL}@champion"


@pytest.fixture(scope="module")
def served(
    tiny_dataset: TinyDataset,
    mlflow_server: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Path]]:
    """The server's URL and a folder with two phantom scans and ``medseg predict``'s outputs."""
    work = tmp_path_factory.mktemp("serving")
    logged = log_tiny_unet(tiny_dataset.plan, mlflow_server, registered_model_name=MODEL)
    version = logged.info.registered_model_version
    MlflowClient(mlflow_server).set_registered_model_alias(MODEL, "champion", version)
    for seed in (0, 1):
        write_phantom_nifti(work / "scans" / f"phantom_{seed}.nii.gz", seed)
    command = ["predict", str(work / "scans"), "--model", URI, "--out", str(work / "predict")]
    command += ["--tracking-uri", mlflow_server, "--case-ids", "folder"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    with running_model_server(URI, tracking_uri=mlflow_server, log_path=work / "serve.log") as url:
        yield url, work


def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _labels(encoded: str, folder: Path) -> np.ndarray:
    path = folder / "answer.nii.gz"
    path.write_bytes(base64.b64decode(encoded))
    return np.asarray(read_nifti(path).array)


def _predicted(work: Path, case: str) -> tuple[np.ndarray, dict[str, Any]]:
    labels = np.asarray(read_nifti(work / "predict" / f"{case}.nii.gz").array)
    return labels, json.loads((work / "predict" / f"{case}.volumes.json").read_text())


def test_a_scan_sent_as_base64_or_named_by_path_is_answered_as_medseg_predict_does(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    url, work = served
    scan = work / "scans" / "phantom_0.nii.gz"
    records = [
        {"nifti_base64": base64.b64encode(scan.read_bytes()).decode(), "path": ""},
        {"nifti_base64": "", "path": str(work / "scans" / "phantom_1.nii.gz")},
    ]
    status, answer = _post(url, {"dataframe_records": records})
    assert status == 200, answer
    rows = answer["predictions"]
    assert [(row["row"], row["ok"]) for row in rows] == [(0, True), (1, True)]
    for row, case in zip(rows, ("phantom_0", "phantom_1"), strict=True):
        labels, volumes = _predicted(work, case)
        np.testing.assert_array_equal(_labels(row["labels_nifti_base64"], tmp_path), labels)
        assert row["volumes"] == volumes
        assert re.fullmatch(r"[a-z]+_[0-9a-f]{16}", row["case"])  # anonymous, as predict's default


def test_params_select_structures_and_a_bad_request_is_refused_naming_its_fault(
    served: tuple[str, Path], tmp_path: Path, tiny_dataset: TinyDataset
) -> None:
    url, work = served
    name = tiny_dataset.plan.label_names[1]
    record = {"path": str(work / "scans" / "phantom_0.nii.gz")}
    status, answer = _post(url, {"dataframe_records": [record], "params": {"structures": name}})
    assert status == 200, answer
    (row,) = answer["predictions"]
    assert list(row["volumes"]) == [name]
    full, _ = _predicted(work, "phantom_0")
    np.testing.assert_array_equal(
        _labels(row["labels_nifti_base64"], tmp_path), np.where(full == 1, 1, 0)
    )
    status, answer = _post(url, {"dataframe_records": [{"path": ""}]})
    assert status >= 400 and "row 0: give nifti_base64" in answer["message"]
    status, answer = _post(url, {"dataframe_records": [{"nifti_base64": "@@"}]})
    assert status >= 400 and "row 0: nifti_base64 is not base64" in answer["message"]
    status, answer = _post(url, {"dataframe_records": [record], "params": {"backend": "tpu"}})
    assert status >= 400 and "params: backend: Input should be 'auto'" in answer["message"]


def test_a_missing_scan_is_a_failed_row_and_the_others_are_answered(
    served: tuple[str, Path],
) -> None:
    url, work = served
    records = [{"path": str(work / "scans" / "nowhere.nii.gz")}, {"path": str(work / "scans")}]
    status, answer = _post(url, {"dataframe_records": records})
    assert status == 200, answer
    rows = answer["predictions"]
    # named by its case id, as medseg predict reports a scan (paths may hold patient names)
    assert rows[0]["row"] == 0 and not rows[0]["ok"] and "file not found" in rows[0]["reason"]
    assert [row["ok"] for row in rows[1:]] == [True, True]  # the folder's two scans


def test_the_tensor_form_still_answers_softmax(
    served: tuple[str, Path],
    mlflow_server: str,  # noqa: F811
) -> None:
    url, _ = served
    rng = np.random.default_rng(0)
    batch = rng.normal(size=(1, 1, 32, 32, 32)).astype(np.float32)
    status, answer = _post(url, {"inputs": batch.tolist()})
    assert status == 200, answer
    probabilities = np.asarray(answer["predictions"], np.float32)
    mlflow.set_tracking_uri(mlflow_server)
    local = mlflow.pyfunc.load_model(URI).predict(batch)
    np.testing.assert_allclose(probabilities, local, atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)


def test_batch_code_uses_the_same_model_through_pyfunc_load_model(
    served: tuple[str, Path],
    mlflow_server: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    _, work = served
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(URI)
    answer = model.predict(pd.DataFrame([{"path": str(work / "scans" / "phantom_1.nii.gz")}]))
    labels, volumes = _predicted(work, "phantom_1")
    np.testing.assert_array_equal(_labels(answer.loc[0, "labels_nifti_base64"], tmp_path), labels)
    assert answer.loc[0, "volumes"] == volumes
