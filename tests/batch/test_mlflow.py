"""One MLflow run per batch, with metrics and artifacts and no paths; an unreachable server
does not fail the batch."""

from __future__ import annotations

import csv
import socket
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from medseg.batch.runner import BatchSettings, run_batch
from medseg.infer.auto import fastest_backend
from tests.batch.conftest import BatchModel
from tests.batch.trees import ScanTree


def small_tree(root: Path) -> ScanTree:
    tree = ScanTree(root)
    tree.nifti("DOE^JANE/a.nii.gz", 0)
    tree.nifti("DOE^JANE/b.nii.gz", 1)
    tree.garbage("DOE^JANE/c.dcm")
    return tree


def test_a_batch_is_logged_as_one_run_with_metrics_and_artifacts(
    batch_model: BatchModel, tmp_path: Path
) -> None:
    tree = small_tree(tmp_path / "scans")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    report = run_batch(
        tree.root,
        str(batch_model.folder),
        tmp_path / "out",
        settings=BatchSettings(tracking_uri=uri),
    )
    assert report.tracking.warning is None and report.exit_code == 1
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("medseg-batch")
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.run_id for run in runs] == [report.tracking.run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model_uri"].startswith("folder:")  # a local model: a hash, not its path
    assert (params["shard"], params["workers"]) == ("0/1", "1")
    # auto is recorded as what it resolved to; the model carries no bf16 agreement: fp32
    assert (params["backend"], params["precision"]) == (fastest_backend().value, "fp32")
    assert (params["overlap"], params["mirror"], params["case_ids"]) == ("0.5", "False", "hash")
    metrics = run.data.metrics
    assert {k: metrics[k] for k in ("scans_found", "scans_in_shard", "done", "skipped")} == {
        "scans_found": 3,
        "scans_in_shard": 3,
        "done": 2,
        "skipped": 0,
    }
    assert (
        metrics["failed"] == 1 and metrics["seconds_total"] > metrics["seconds_per_scan_mean"] > 0
    )
    rows = [
        r for r in csv.DictReader((tmp_path / "out/summary.csv").open()) if r["status"] == "done"
    ]
    mean_liver = sum(float(r["liver_ml"]) for r in rows) / 2
    assert metrics["volume_ml_mean.liver"] == pytest.approx(mean_liver, abs=1e-9)
    logged = client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts"))
    for name in ("summary.csv", "failures.jsonl"):
        assert (Path(logged) / name).read_text() == (tmp_path / "out" / name).read_text()
    everything = [*params.values(), *run.data.tags.values(), run.info.run_name]
    assert not [value for value in everything if str(tmp_path) in value or "DOE" in value]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_tracking_server_does_not_fail_the_batch(
    batch_model: BatchModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    tree = ScanTree(tmp_path / "scans")
    tree.nifti("a.nii.gz", 0)
    started = time.monotonic()
    report = run_batch(
        tree.root,
        str(batch_model.folder),
        tmp_path / "out",
        settings=BatchSettings(tracking_uri=f"http://127.0.0.1:{_closed_port()}"),
    )
    assert report.exit_code == 0 and len(report.done) == 1
    assert report.tracking.run_id is None
    assert report.tracking.warning.startswith("batch not logged to MLflow")
    assert (tmp_path / "out/summary.csv").read_text().count("\n") == 2  # header + the scan
    assert time.monotonic() - started < 60
