"""``deploy/slurm/medseg-train-ddp.sbatch`` on the real Slurm cluster (``tests/slurm_cluster.py``):
two tasks on two nodes, each ``srun`` task a ``torchrun`` agent, one process per node, gloo on
the CPU; one checkpoint, one MLflow run, identical replicas."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from tests.mlflow_server import free_port
from tests.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401  (session fixture)
from tests.tiny_dataset import TinyDataset

pytestmark = pytest.mark.slow

SBATCH = Path(__file__).resolve().parents[2] / "deploy" / "slurm" / "medseg-train-ddp.sbatch"
TINY = {
    "epochs": 1,
    "steps_per_epoch": 3,
    "batch_size": 2,
    "num_workers": 0,
    "threads": 1,
    "network": {"deep_supervision": True, "base_filters": 4},
    "validation": {"max_cases": 1, "overlay_pictures": 0},
}


def test_ddp_training_submitted_with_sbatch_trains_two_identical_replicas(
    slurm_cluster: SlurmCluster,  # noqa: F811
    tiny_dataset: TinyDataset,
    tmp_path: Path,
) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(TINY))
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    run_dir = tmp_path / "run"
    (tmp_path / "logs").mkdir()
    job = slurm_cluster.run(
        "sbatch",
        "--parsable",
        "--nodes=2",
        "--cpus-per-task=1",
        "--mem=2G",
        str(SBATCH),
        *("--manifest", str(tiny_dataset.manifest), "--plan", str(tiny_dataset.plan_path)),
        *("--cache", str(tiny_dataset.cache), "--config", str(config)),
        *("--run-dir", str(run_dir), "--tracking-uri", tracking),
        cwd=tmp_path,
        CONTAINER_RUNTIME="none",  # torchrun and medseg from this venv, on PATH
        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        MASTER_PORT=str(free_port()),
        MLFLOW_ENV_FILE="/nonexistent",
        MEDSEG_HOME="/nonexistent-unused",
    ).strip()
    states = slurm_cluster.wait_for(job)
    log = (tmp_path / "logs" / f"medseg-train-ddp-{job}.out").read_text()
    assert states == {job: "COMPLETED"}, log[-3000:]
    assert "2 node(s) x 1 process(es)" in log
    checksums = json.loads((run_dir / "replica_checksums.json").read_text())
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    # one checkpoint (its last and best states), written by rank 0 alone
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["state"]
    assert int(state["step"]) == 3
    client = MlflowClient(tracking_uri=tracking)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [run.info.run_id for run in runs] == [state["run_id"]]
    assert runs[0].info.status == "FINISHED"
