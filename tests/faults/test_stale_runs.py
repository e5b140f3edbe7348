"""Runs a SIGKILLed command left RUNNING are marked FAILED by the next command in its folder;
a resumed training run is reopened and ends FINISHED; a live run of another process is left
alone. A real ``mlflow server`` on loopback, real subprocesses, phantom data."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from medseg.batch.runner import BatchSettings, run_batch
from medseg.pipeline.records import load_record
from medseg.tracking.ownership import RUNS_FOLDER, ProcessIdentity
from medseg.tracking.tags import STALE_REASON, TAG_RESUMED, TAG_STALE
from tests.mlflow_server import running_mlflow_server
from tests.packaged_model import log_tiny_unet
from tests.phantom_plan import plan_phantoms
from tests.phantoms import write_phantom_nifti
from tests.tiny_dataset import TinyDataset, tiny_config

PIPELINE = """
name: stale
experiment: stale-runs
data_root: data
config_root: .
stages:
  - {stage: import-dataset, name: dataset, dataset: phantoms, modality: CT}
  - {stage: plan, config: plan.yaml, workers: 1}
  - {stage: preprocess, workers: 1}
  - {stage: train, config: train.yaml}
"""

TRAIN = tiny_config(  # a checkpoint every step: a kill after step 2 lands mid-training
    epochs=3,
    steps_per_epoch=6,
    checkpoint_every_steps=1,
    validation={"max_cases": 1, "overlay_pictures": 0},
).model_dump(mode="json")

LIVE_RUN = """
import sys, time
from pathlib import Path
from medseg.tracking.runs import RunTracker

tracker = RunTracker(sys.argv[1], home=Path(sys.argv[2]), role="other")
tracker.start(experiment=sys.argv[3], run_name="live", tags={})
print(tracker.run_id, flush=True)
time.sleep(3600)
"""


def _environment() -> dict[str, str]:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MEDSEG_HOME": "/nonexistent-unused"}
    environment.pop("MLFLOW_TRACKING_URI", None)
    return environment


def _checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, weights_only=False)["state"]
    except (OSError, RuntimeError, EOFError, KeyError):
        return {"step": -1}


def _kill_in_training(command: list[str], last_checkpoint: Path, total_steps: int) -> int:
    """Start ``command``, SIGKILL it once its training has saved step 2; return its PID."""
    process = subprocess.Popen(
        command, env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 600
    while _checkpoint(last_checkpoint)["step"] < 2 and process.poll() is None:
        assert time.monotonic() < deadline, "training did not start within 10 minutes"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    step = _checkpoint(last_checkpoint)["step"]
    assert 2 <= step < total_steps, stderr.decode()[-3000:]
    return process.pid


def _start_live_run(tracking_uri: str, home: Path, experiment: str) -> tuple[subprocess.Popen, str]:
    """Another process that keeps a run open with its run file in ``home``."""
    process = subprocess.Popen(
        [sys.executable, "-c", LIVE_RUN, tracking_uri, str(home), experiment],
        env=_environment(),
        stdout=subprocess.PIPE,
        text=True,
    )
    return process, process.stdout.readline().strip()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real MLflow server (SQLite backend) on loopback for this module."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A pipeline file, its configs and four labelled phantoms in a temporary folder."""
    for folder in ("images", "labels"):
        (tmp_path / "data" / "phantoms" / folder).mkdir(parents=True)
    for seed in range(4):
        write_phantom_nifti(
            tmp_path / f"data/phantoms/images/phantom_{seed}.nii.gz",
            seed,
            label_path=tmp_path / f"data/phantoms/labels/phantom_{seed}.nii.gz",
        )
    (tmp_path / "plan.yaml").write_text("patch_size_3d: [32, 32, 32]\n")
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(TRAIN))
    (tmp_path / "stale.yaml").write_text(PIPELINE)
    return tmp_path


@pytest.mark.slow  # minutes of commands: the serial slow suite, so make test stays < 15 min
def test_a_pipeline_killed_in_training_is_marked_failed_and_its_training_resumes(
    project: Path, mlflow_server: str
) -> None:
    work = project / "work"
    command = [
        sys.executable, "-m", "medseg", "run", str(project / "stale.yaml"),
        "--work-dir", str(work), "--tracking-uri", mlflow_server,
    ]  # fmt: skip
    last = work / "train/checkpoints/last.pt"
    killed_pid = _kill_in_training(command, last, TRAIN["epochs"] * TRAIN["steps_per_epoch"])
    train_run_id = _checkpoint(last)["run_id"]
    client = MlflowClient(mlflow_server)
    experiment_id = client.get_experiment_by_name("stale-runs").experiment_id
    running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'")
    by_stage = {run.data.tags["medseg.stage"]: run for run in running}
    assert sorted(by_stage) == ["pipeline", "train"]
    assert by_stage["train"].info.run_id == train_run_id
    assert {run.data.tags["medseg.owner.pid"] for run in running} == {str(killed_pid)}
    killed_parent_id = by_stage["pipeline"].info.run_id

    other, other_run_id = _start_live_run(mlflow_server, work, "stale-runs")
    try:
        rerun = subprocess.run(
            command, env=_environment(), capture_output=True, text=True, timeout=900
        )
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert f"MLflow run {killed_parent_id} (stale) marked FAILED" in rerun.stderr

        killed_parent = client.get_run(killed_parent_id)
        assert killed_parent.info.status == "FAILED"
        assert killed_parent.info.end_time >= killed_parent.info.start_time
        assert killed_parent.data.tags[TAG_STALE] == STALE_REASON

        resumed = client.get_run(train_run_id)  # marked FAILED, then reopened by the rerun
        assert resumed.info.status == "FINISHED"
        assert TAG_STALE not in resumed.data.tags and TAG_RESUMED in resumed.data.tags
        assert resumed.data.tags["medseg.owner.pid"] != str(killed_pid)
        record = load_record(work / "train")
        assert record.run_id == train_run_id and record.summary["resumed"] is True
        losses = client.get_metric_history(train_run_id, "train_loss")
        assert sorted({metric.step for metric in losses}) == [1, 2, 3]

        parents = client.search_runs([experiment_id], "tags.`medseg.stage` = 'pipeline'")
        assert sorted(run.info.status for run in parents) == ["FAILED", "FINISHED"]
        live = client.get_run(other_run_id)
        assert live.info.status == "RUNNING" and TAG_STALE not in live.data.tags
        assert [p.name for p in (work / RUNS_FOLDER).iterdir()] == [f"{other_run_id}.json"]
        assert not list((work / "train" / RUNS_FOLDER).iterdir())
    finally:
        other.kill()
        other.wait()


@pytest.mark.slow  # minutes of commands: the serial slow suite, so make test stays < 15 min
def test_a_training_killed_and_started_afresh_marks_the_old_run_failed(
    tiny_dataset: TinyDataset, mlflow_server: str, tmp_path: Path
) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({**TRAIN, "steps_per_epoch": 4}))
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "medseg", "train", "--manifest", str(tiny_dataset.manifest),
        "--plan", str(tiny_dataset.plan_path), "--cache", str(tiny_dataset.cache),
        "--config", str(config), "--run-dir", str(run_dir), "--tracking-uri", mlflow_server,
    ]  # fmt: skip
    last = run_dir / "checkpoints/last.pt"
    _kill_in_training(command, last, TRAIN["epochs"] * 4)
    killed_run_id = _checkpoint(last)["run_id"]
    client = MlflowClient(mlflow_server)
    assert client.get_run(killed_run_id).info.status == "RUNNING"

    again = subprocess.run(command, env=_environment(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    killed = client.get_run(killed_run_id)
    assert killed.info.status == "FAILED"
    assert killed.data.tags[TAG_STALE] == STALE_REASON
    fresh_run_id = _checkpoint(last)["run_id"]
    assert fresh_run_id != killed_run_id
    assert client.get_run(fresh_run_id).info.status == "FINISHED"
    assert not list((run_dir / RUNS_FOLDER).iterdir())


def test_a_batch_run_left_running_is_marked_by_the_next_batch_in_that_folder(
    tmp_path: Path,
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "out"
    killed, killed_run_id = _start_live_run(uri, out, "medseg-batch")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    client = MlflowClient(uri)
    assert client.get_run(killed_run_id).info.status == "RUNNING"
    (tmp_path / "scans").mkdir()
    log_tiny_unet(plan_phantoms(tmp_path / "plan"), uri, registered_model_name="stale-batch")
    report = run_batch(
        tmp_path / "scans",
        "models:/stale-batch/1",  # read before the (empty) inventory: its input channels
        out,
        settings=BatchSettings(tracking_uri=uri),
    )
    assert report.tracking.warning is None
    stale = client.get_run(killed_run_id)
    assert stale.info.status == "FAILED" and stale.data.tags[TAG_STALE] == STALE_REASON
    assert client.get_run(report.tracking.run_id).info.status == "FINISHED"
    assert not list((out / RUNS_FOLDER).iterdir())


def test_a_process_is_alive_until_it_is_gone_and_unknown_elsewhere() -> None:
    me = ProcessIdentity.current()
    assert me.alive() is True
    assert replace(me, start=me.start.rsplit("/", 1)[0] + "/1").alive() is False  # PID reused
    assert replace(me, host=f"not-{socket.gethostname()}").alive() is None
    boot, namespace, ticks = me.start.split("/")
    assert replace(me, start=f"another-boot/{namespace}/{ticks}").alive() is False
    assert replace(me, start=f"{boot}/pid:[1]/{ticks}").alive() is None  # another container
    child = subprocess.Popen(["sleep", "60"])
    identity = ProcessIdentity.of(child.pid)
    assert identity.alive() is True
    child.kill()
    deadline = time.monotonic() + 10
    while identity.alive() and time.monotonic() < deadline:  # a zombie until reaped
        time.sleep(0.05)
    assert identity.alive() is False
    child.wait()
    assert identity.alive() is False
