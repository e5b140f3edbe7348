"""SIGTERM and SIGKILL for the other long commands, each a real ``python -m medseg``: training,
predict, ingest and a pipeline stop within the grace period with exit 143, leave no process and
nothing half-written behind, end their MLflow runs as KILLED, and continue when run again."""

from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from medseg.demo.dicom_writer import TransferSyntax
from medseg.ingest import ingest as run_ingest
from medseg.ingest.stage import OutcomeKind
from medseg.pipeline.records import load_record
from tests.batch.conftest import BatchModel
from tests.faults.processes import (
    START_SECONDS,
    STOP_SECONDS,
    MedsegProcess,
    children,
    session_processes,
    wait_until_gone,
    wait_until_session_ends,
)
from tests.faults.scan_trees import write_phantom_scans, write_phantom_series
from tests.phantoms import write_phantom_nifti
from tests.tiny_dataset import TinyDataset
from tests.train.test_resume_and_ddp import _command as train_arguments

KILLED = RunStatus.to_string(RunStatus.KILLED)
FINISHED = RunStatus.to_string(RunStatus.FINISHED)


def _stop(command: MedsegProcess, signum: int = signal.SIGTERM) -> None:
    """Signal ``command``; it must exit 128 + signum in time and leave no process behind."""
    command.signal(signum)
    code, seconds = command.wait_exit()
    assert code == (128 + signum if signum != signal.SIGKILL else -signum), command.output()
    assert seconds < STOP_SECONDS
    assert wait_until_session_ends(command.pid) == []
    if signum != signal.SIGKILL:
        assert f"stopped by {signal.Signals(signum).name}" in command.output()
        assert "Traceback" not in command.output()


TRAIN = {
    "epochs": 1,
    "steps_per_epoch": 100_000,  # never reached: the test stops it
    "checkpoint_every_steps": 100_000,  # so last.pt can only come from the stop
    "batch_size": 2,
    "num_workers": 2,  # DataLoader worker processes that must end too
    "threads": 1,
    "network": {"deep_supervision": True, "base_filters": 4},
    "validation": {"max_cases": 1, "overlay_pictures": 0},
}


@pytest.mark.slow  # minutes of commands: the serial slow suite, so make test stays < 15 min
def test_sigterm_stops_training_after_a_step_with_a_checkpoint_of_that_step(
    tiny_dataset: TinyDataset, tmp_path: Path
) -> None:
    command = train_arguments(tiny_dataset, tmp_path, TRAIN)
    log = tmp_path / "train.log"
    with MedsegProcess.start(command, log, env={"OMP_NUM_THREADS": "1"}) as train:
        # the trainer and its two DataLoader workers: training has begun
        train.wait_for(lambda: len(session_processes(train.pid)) >= 3, "the loader started")
        time.sleep(2)
        _stop(train)
    stopped = re.search(r"stopped after step (\d+)", train.output())
    assert stopped, train.output()
    last = tmp_path / "run/checkpoints/last.pt"
    state = torch.load(last, weights_only=False)["state"]
    assert state["step"] == int(stopped[1]) >= 1  # written at the step it stopped after
    assert list(last.parent.glob(".tmp-*")) == []
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(state["run_id"]).info.status == KILLED

    # resumable: one more step (the time budget is already used up), then it finishes
    resume = [*command, "--resume", "--max-minutes", "0.001"]
    with MedsegProcess.start(resume, tmp_path / "resume.log") as resumed:
        assert resumed.wait_exit(timeout=START_SECONDS)[0] == 0, resumed.output()
    assert torch.load(last, weights_only=False)["state"]["step"] == state["step"] + 1
    assert client.get_run(state["run_id"]).info.status == FINISHED


def test_sigterm_stops_predict_with_every_case_written_whole(
    batch_model: BatchModel, tmp_path: Path
) -> None:
    scans, out = tmp_path / "scans", tmp_path / "out"
    write_phantom_scans(scans, 30)
    command = ["predict", str(scans), "--model", batch_model.uri, "--out", str(out)]
    command += ["--tracking-uri", batch_model.tracking_uri]
    with MedsegProcess.start(command, tmp_path / "predict.log") as predict:
        predict.wait_for(lambda: any(out.glob("*.volumes.json")), "a case was written")
        _stop(predict)
    label_maps = {path.name.removesuffix(".nii.gz") for path in out.glob("*.nii.gz")}
    volumes = {path.name.removesuffix(".volumes.json") for path in out.glob("*.volumes.json")}
    assert label_maps == volumes  # a case has all its files or none
    assert 0 < len(label_maps) < 30
    assert list(out.rglob(".tmp-*")) == []


def _converted(images: Path) -> set[str]:
    """Cases whose sidecar, written last, is there."""
    return {path.stem for path in images.glob("*.json")}


def test_sigterm_stops_ingest_with_whole_cases_and_the_rerun_converts_the_rest_once(
    tmp_path: Path,
) -> None:
    dicom, out = tmp_path / "dicom", tmp_path / "out"
    write_phantom_series(dicom, 24, transfer_syntax=TransferSyntax.JPEGLS_LOSSLESS)
    command = ["ingest", str(dicom), "--out", str(out), "--workers", "2"]
    with MedsegProcess.start(command, tmp_path / "ingest.log") as ingest:
        ingest.wait_for(lambda: _converted(out / "images"), "a case was converted")
        _stop(ingest)
    converted = _converted(out / "images")
    assert {path.name.removesuffix(".nii.gz") for path in (out / "images").glob("*.nii.gz")} == (
        converted
    )
    assert 0 < len(converted) < 24
    assert list(out.rglob(".tmp-*")) == []

    report = run_ingest(dicom, out, workers=2)
    assert report.exit_code == 0
    unchanged = {outcome.case_id for outcome in report.of_kind(OutcomeKind.UNCHANGED)}
    now = [outcome.case_id for outcome in report.of_kind(OutcomeKind.CONVERTED)]
    assert unchanged == converted
    assert len(now) == len(set(now)) == 24 - len(converted) and not unchanged & set(now)


def test_no_decoder_process_outlives_ingest_killed_with_sigkill(tmp_path: Path) -> None:
    dicom = tmp_path / "dicom"
    write_phantom_series(
        dicom, 12, shape=(96, 96, 12), transfer_syntax=TransferSyntax.JPEGLS_LOSSLESS
    )
    command = ["ingest", str(dicom), "--out", str(tmp_path / "out"), "--workers", "2"]
    with MedsegProcess.start(command, tmp_path / "ingest.log") as ingest:
        # compressed series of >= 8 files are decoded by a pool of 2 processes
        ingest.wait_for(lambda: len(session_processes(ingest.pid)) >= 3, "decoders started")
        _stop(ingest, signal.SIGKILL)


PIPELINE = """
name: stoppable
experiment: {experiment}
data_root: data
config_root: .
stages:
  - {{stage: import-dataset, name: dataset, dataset: phantoms, modality: CT}}
  - {{stage: plan, config: plan.yaml}}
  - {{stage: preprocess, workers: 2}}
  - {{stage: train, config: train.yaml}}
"""

PIPELINE_TRAINING = {
    **TRAIN,
    "num_workers": 0,
    "checkpoint_every_steps": 2,
    "max_minutes": 0.3,  # the rerun trains to the end of this budget
}


def _pipeline_project(tmp_path: Path) -> Path:
    """A four-stage pipeline (import, plan, preprocess, train) on six phantoms."""
    for seed in range(6):
        write_phantom_nifti(
            tmp_path / f"data/phantoms/images/phantom_{seed}.nii.gz",
            seed,
            label_path=tmp_path / f"data/phantoms/labels/phantom_{seed}.nii.gz",
        )
    (tmp_path / "plan.yaml").write_text("patch_size_3d: [32, 32, 32]\n")
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(PIPELINE_TRAINING))
    pipeline = tmp_path / "stoppable.yaml"
    pipeline.write_text(PIPELINE.format(experiment=tmp_path.name))
    return pipeline


def _stage_status(work: Path, stage: str) -> str | None:
    record = load_record(work / stage)
    return record.status if record is not None else None


@pytest.mark.slow  # about 2 minutes; training and batch stops are tested above on their own
def test_sigterm_stops_a_pipeline_in_training_and_the_rerun_resumes_that_stage(
    tmp_path: Path,
) -> None:
    pipeline, work = _pipeline_project(tmp_path), tmp_path / "work"
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    command = ["run", str(pipeline), "--work-dir", str(work), "--tracking-uri", tracking]
    with MedsegProcess.start(command, tmp_path / "run.log") as run:
        run.wait_for(lambda: (work / "train/checkpoints/last.pt").exists(), "training was on")
        _stop(run)
    assert _stage_status(work, "train") == "running"  # marked interrupted: the rerun resumes it
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name(tmp_path.name)
    found = client.search_runs([experiment.experiment_id])
    runs = {run.data.tags["mlflow.runName"]: run for run in found}
    parent = runs.pop("stoppable")
    assert parent.info.status == KILLED
    training = next(r for name, r in runs.items() if name.startswith("train-"))
    assert training.info.status == KILLED
    assert training.data.tags["mlflow.parentRunId"] == parent.info.run_id

    with MedsegProcess.start(command, tmp_path / "rerun.log") as rerun:
        assert rerun.wait_exit(timeout=START_SECONDS)[0] == 0, rerun.output()
    record = load_record(work / "train")
    assert record.status == "done" and record.summary["resumed"] is True
    assert record.run_id == training.info.run_id  # the same MLflow run, continued
    assert client.get_run(record.run_id).info.status == FINISHED


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_after_the_same_step(
    tiny_dataset: TinyDataset, tmp_path: Path
) -> None:
    """torchrun forwards SIGTERM to each rank; they agree to stop after one step."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node", "2"]
    torchrun += ["--master_addr", "127.0.0.1", "--master_port", str(port)]
    config = {**TRAIN, "num_workers": 0, "checkpoint_every_steps": 3}
    command = [*torchrun, "-m", "medseg", *train_arguments(tiny_dataset, tmp_path, config)]
    log = tmp_path / "torchrun.log"
    last = tmp_path / "run/checkpoints/last.pt"
    with MedsegProcess.start(command, log, env={"OMP_NUM_THREADS": "1"}, module=None) as agent:
        # torchrun starts each rank in a session of its own
        agent.wait_for(lambda: len(children(agent.pid)) == 2, "the ranks started")
        rank_pids = [process.pid for process in children(agent.pid)]
        agent.wait_for(last.exists, "the ranks trained 3 steps")
        agent.signal(signal.SIGTERM)
        agent.wait_exit()
        assert wait_until_gone(rank_pids) == []
    assert agent.output().count("stopped by SIGTERM") == 2  # both ranks
    stopped = re.search(r"stopped after step (\d+)", agent.output())  # rank 0
    state = torch.load(last, weights_only=False)["state"]
    assert stopped and state["step"] == int(stopped[1]) >= 1
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(state["run_id"]).info.status == KILLED
