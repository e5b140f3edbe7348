"""A killed training resumes from its last checkpoint; DDP replicas stay identical."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from tests.tiny_dataset import TinyDataset

TINY = {
    "steps_per_epoch": 4,
    "batch_size": 2,
    "num_workers": 0,
    "threads": 1,
    "checkpoint_every_steps": 1,
    "network": {"deep_supervision": True, "base_filters": 4},
    "validation": {"max_cases": 1, "overlay_pictures": 0},
}


def _command(dataset: TinyDataset, tmp_path: Path, config: dict, *extra: str) -> list[str]:
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return [
        "train",
        "--manifest",
        str(dataset.manifest),
        "--plan",
        str(dataset.plan_path),
        "--cache",
        str(dataset.cache),
        "--config",
        str(config_path),
        "--run-dir",
        str(tmp_path / "run"),
        "--tracking-uri",
        f"sqlite:///{tmp_path}/mlflow.db",
        *extra,
    ]


def _environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MEDSEG_HOME": "/nonexistent-unused"}


def _checkpoint_step(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=False)["state"]["step"])
    except (OSError, RuntimeError, EOFError, KeyError):
        return -1


@pytest.mark.slow  # minutes of commands: the serial slow suite, so make test stays < 15 min
def test_training_killed_with_sigkill_resumes_where_it_stopped(
    tiny_dataset: TinyDataset, tmp_path: Path
) -> None:
    command = [
        sys.executable,
        "-m",
        "medseg",
        *_command(tiny_dataset, tmp_path, {**TINY, "epochs": 3}),
    ]
    process = subprocess.Popen(
        command, env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    last = tmp_path / "run/checkpoints/last.pt"
    deadline = time.monotonic() + 240
    while _checkpoint_step(last) < 5 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = _checkpoint_step(last)
    assert 5 <= killed_at < 12, process.stderr.read().decode()[-2000:] if process.stderr else ""
    run_id = torch.load(last, weights_only=False)["state"]["run_id"]
    resumed = subprocess.run(
        [*command, "--resume"], env=_environment(), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _checkpoint_step(last) == 12
    history = json.loads((tmp_path / "run/history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2, 3]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(run_id).info.status == "FINISHED"  # the same run, continued
    losses = client.get_metric_history(run_id, "train_loss")
    assert sorted({m.step for m in losses}) == [1, 2, 3]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow  # minutes of commands: the serial slow suite, so make test stays < 15 min
def test_two_ddp_processes_on_cpu_keep_identical_replicas(
    tiny_dataset: TinyDataset, tmp_path: Path
) -> None:
    arguments = _command(tiny_dataset, tmp_path, {**TINY, "epochs": 1, "steps_per_epoch": 3})
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "medseg",
        *arguments,
    ]
    result = subprocess.run(
        command, env=_environment(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checksums = json.loads((tmp_path / "run/replica_checksums.json").read_text())
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    initial_run = tmp_path / "run/checkpoints/last.pt"
    assert _checkpoint_step(initial_run) == 3
