"""Schedulers stop jobs with SIGTERM, then SIGKILL: a real ``medseg batch`` stops within the
grace period with exit 143, leaves only complete cases and no process behind, ends its MLflow
run as KILLED; after a SIGKILL of its parent alone no child survives; the rerun does every scan
exactly once."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from medseg.batch.runner import BatchSettings, run_batch
from tests.batch.conftest import BatchModel, batch_command
from tests.batch.test_batch_run import file_stamps
from tests.faults.processes import STOP_SECONDS, MedsegProcess, wait_until_session_ends
from tests.faults.scan_trees import write_phantom_scans

SCANS = 12


def _complete(out: Path) -> set[str]:
    return {path.parent.name for path in out.glob("*/result.json")}


def _start_batch(model: BatchModel, tmp_path: Path) -> tuple[MedsegProcess, Path, Path]:
    scans, out = tmp_path / "scans", tmp_path / "out"
    write_phantom_scans(scans, SCANS)
    arguments = batch_command(scans, model, out, "--workers", "2", "--experiment", tmp_path.name)
    batch = MedsegProcess.start(arguments, tmp_path / "batch.log")
    try:
        batch.wait_for(lambda: _complete(out), "a scan was complete")
    except BaseException:
        batch.kill_everything()
        raise
    return batch, scans, out


def _assert_only_complete_cases(out: Path, *, stopped_cleanly: bool = True) -> set[str]:
    """Every case folder is complete; returns the complete cases. A clean stop also leaves no
    staging folder or temporary file (after a SIGKILL the rerun removes those)."""
    complete = _complete(out)
    folders = {p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert folders == complete
    if stopped_cleanly:
        assert list((out / ".staging").iterdir()) == []
        assert list(out.rglob(".tmp-*")) == []
    return complete


def _assert_rerun_does_the_rest_once(
    scans: Path, out: Path, model: BatchModel, done_before: set[str]
) -> None:
    stamps = {case_id: file_stamps(out / case_id) for case_id in done_before}
    report = run_batch(
        scans,
        model.uri,
        out,
        settings=BatchSettings(workers=2, tracking_uri=model.tracking_uri),
    )
    assert report.exit_code == 0 and report.failed == []
    assert sorted(report.skipped) == sorted(done_before)
    done_now = [result.case_id for result in report.done]
    assert len(done_now) == len(set(done_now)) == SCANS - len(done_before)
    assert set(done_now) | done_before == _complete(out)
    assert {case_id: file_stamps(out / case_id) for case_id in done_before} == stamps


@pytest.mark.parametrize("whole_group", [False, True], ids=["kubernetes", "slurm"])
def test_sigterm_stops_a_batch_cleanly_and_the_rerun_does_each_scan_once(
    batch_model: BatchModel, tmp_path: Path, whole_group: bool
) -> None:
    """Kubernetes signals the container's main process only; Slurm every process of the job."""
    batch, scans, out = _start_batch(batch_model, tmp_path)
    with batch:
        batch.signal(signal.SIGTERM, whole_group=whole_group)
        code, seconds = batch.wait_exit()
        assert code == 128 + signal.SIGTERM, batch.output()
        assert seconds < STOP_SECONDS
        assert wait_until_session_ends(batch.pid) == []
    assert "stopped by SIGTERM" in batch.output()
    assert "Traceback" not in batch.output()
    done_before = _assert_only_complete_cases(out)
    assert 0 < len(done_before) < SCANS, "the signal came while the batch was mid-work"
    client = MlflowClient(batch_model.tracking_uri)
    experiment = client.get_experiment_by_name(tmp_path.name)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == RunStatus.to_string(RunStatus.KILLED)
    assert run.data.metrics["done"] == len(done_before)
    _assert_rerun_does_the_rest_once(scans, out, batch_model, done_before)


def test_no_child_outlives_a_batch_parent_killed_with_sigkill(
    batch_model: BatchModel, tmp_path: Path
) -> None:
    """SIGKILL to the parent alone: workers, forkserver and resource tracker end by themselves."""
    batch, scans, out = _start_batch(batch_model, tmp_path)
    with batch:
        children = [p for p in wait_until_session_ends(batch.pid, timeout=0) if p.pid != batch.pid]
        assert len(children) >= 3, children  # resource tracker, forkserver, workers
        batch.signal(signal.SIGKILL)
        assert batch.wait_exit()[0] == -signal.SIGKILL
        assert wait_until_session_ends(batch.pid) == []
    done_before = _assert_only_complete_cases(out, stopped_cleanly=False)
    _assert_rerun_does_the_rest_once(scans, out, batch_model, done_before)
