"""Two ``medseg batch`` runs on one output folder share the work: each scan is done once."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.batch.conftest import BatchModel, batch_command
from tests.faults.processes import START_SECONDS, MedsegProcess
from tests.faults.scan_trees import write_phantom_scans

SCANS = 16


@pytest.mark.slow  # minutes of commands: the serial slow suite, so make test stays < 15 min
def test_two_batches_on_one_folder_do_each_scan_once(
    batch_model: BatchModel, tmp_path: Path
) -> None:
    scans, out = tmp_path / "scans", tmp_path / "out"
    write_phantom_scans(scans, SCANS)
    arguments = batch_command(scans, batch_model, out, "--workers", "2")
    arguments += ["--experiment", tmp_path.name]
    first = MedsegProcess.start(arguments, tmp_path / "first.log")
    second = MedsegProcess.start(arguments, tmp_path / "second.log")
    with first, second:
        assert first.wait_exit(timeout=START_SECONDS)[0] == 0, first.output()
        assert second.wait_exit(timeout=START_SECONDS)[0] == 0, second.output()

    client = MlflowClient(batch_model.tracking_uri)
    experiment = client.get_experiment_by_name(tmp_path.name)
    runs = [run.data.metrics for run in client.search_runs([experiment.experiment_id])]
    assert len(runs) == 2
    # every scan was predicted by exactly one of the two runs
    assert sum(metrics["done"] for metrics in runs) == SCANS
    for metrics in runs:  # and each run accounts for every scan
        assert metrics["done"] + metrics["skipped"] + metrics["done_elsewhere"] == SCANS
        assert metrics["failed"] == 0
    complete = {path.parent.name for path in out.glob("*/result.json")}
    assert len(complete) == SCANS
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert sorted(row["case_id"] for row in rows) == sorted(complete)
    assert list((out / ".staging").iterdir()) == []
