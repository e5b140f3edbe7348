"""A team MLflow server as deployed: PostgreSQL backend store, artifacts in a real S3 object
store (SeaweedFS, ``tests/object_store.py``) behind ``--artifacts-destination s3://...``.
``medseg train --register`` logs through the server only (the client holds no S3
credentials), the model's files are in the bucket (listed through the S3 API, not on the
server's disk), and ``medseg batch`` workers load it by alias."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.batch.trees import ScanTree
from tests.mlflow_server import running_mlflow_server
from tests.object_store import SCRIPT, ObjectStore, object_store  # noqa: F401  (fixture)
from tests.postgres_server import PostgresServer, postgres_server  # noqa: F401
from tests.tiny_dataset import TinyDataset

REPOSITORY = Path(__file__).resolve().parents[2]
MODEL_NAME = "phantoms-s3"
PREFIX = "team"  # artifacts under s3://BUCKET/team/
TINY = {
    "epochs": 1,
    "steps_per_epoch": 2,
    "batch_size": 2,
    "num_workers": 0,
    "threads": 1,
    "network": {"deep_supervision": True, "base_filters": 4},
    "validation": {"max_cases": 1, "overlay_pictures": 0},
}


def _medseg(*arguments: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh process with no S3 credentials: it reaches artifacts only through the
    MLflow server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env |= {"OMP_NUM_THREADS": "1", "MEDSEG_HOME": "/nonexistent-unused"}
    return subprocess.run(
        [sys.executable, "-m", "medseg", *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_a_model_trained_through_the_server_lives_in_the_bucket_and_batch_loads_it_by_alias(
    object_store: ObjectStore,  # noqa: F811
    postgres_server: PostgresServer,  # noqa: F811
    tiny_dataset: TinyDataset,
    tmp_path: Path,
) -> None:
    destination = f"s3://{object_store.bucket}/{PREFIX}"
    with running_mlflow_server(
        tmp_path / "server",
        backend_store_uri=postgres_server.uri(),
        artifacts_destination=destination,
        env=object_store.env(),
        timeout_s=120,
    ) as url:
        config = tmp_path / "train.yaml"
        config.write_text(yaml.safe_dump(TINY))
        trained = _medseg(
            "train",
            *("--manifest", str(tiny_dataset.manifest), "--plan", str(tiny_dataset.plan_path)),
            *("--cache", str(tiny_dataset.cache), "--config", str(config)),
            *("--run-dir", str(tmp_path / "run"), "--tracking-uri", url),
            *("--register", MODEL_NAME),
        )
        assert trained.returncode == 0, trained.stderr[-3000:]
        client = MlflowClient(url)
        version = client.get_registered_model(MODEL_NAME).latest_versions[0]
        client.set_registered_model_alias(MODEL_NAME, "champion", version.version)
        run = client.get_run(version.run_id)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # served, not direct

        # the model's files are objects in the bucket, under the server's destination
        keys = object_store.keys(f"{PREFIX}/")
        model_files = [key for key in keys if version.run_id in key or "models/" in key]
        assert any(key.endswith("/MLmodel") for key in model_files), keys
        assert any(key.endswith("weights.pt") for key in model_files), keys
        assert not (tmp_path / "server" / "artifacts").exists()  # nothing on the server's disk

        tree = ScanTree(tmp_path / "scans")
        for seed in range(4):
            tree.nifti(f"case_{seed}.nii.gz", seed)
        out = tmp_path / "out"
        batch = _medseg(
            "batch",
            str(tree.root),
            *("--model", f"models:/{MODEL_NAME}@champion", "--tracking-uri", url),
            *("--out", str(out), "--workers", "2", "--case-ids", "folder"),
        )
        assert batch.returncode == 0, batch.stderr[-3000:]
        results = [json.loads(p.read_text()) for p in sorted(out.glob("*/result.json"))]
        assert [r["case_id"] for r in results] == [f"case_{seed}" for seed in range(4)]
        assert {r["model"] for r in results} == {f"models:/{MODEL_NAME}/{version.version}"}


def test_the_compose_stack_runs_the_store_and_the_server_as_this_test_does() -> None:
    compose = yaml.safe_load((REPOSITORY / "deploy/compose/docker-compose.yml").read_text())
    services = compose["services"]
    store, server = services["seaweedfs"], services["mlflow"]
    # the same start script (the fixture runs it too), mounted where the entrypoint reads it
    assert store["entrypoint"] == ["/bin/sh", "/seaweedfs-s3.sh"]
    assert "./seaweedfs-s3.sh:/seaweedfs-s3.sh:ro" in store["volumes"]
    assert SCRIPT == REPOSITORY / "deploy/compose/seaweedfs-s3.sh"
    # the server writes with the store's only key, to its S3 port, into an s3:// destination
    environment = server["environment"]
    assert environment["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert environment["MLFLOW_S3_ENDPOINT_URL"] == "http://seaweedfs:8333"
    assert environment["MLFLOW_SERVE_ARTIFACTS"] == "true"
    assert environment["AWS_ACCESS_KEY_ID"] == "${MLFLOW_S3_ACCESS_KEY}"
    assert store["environment"]["MLFLOW_S3_ACCESS_KEY"].startswith("${MLFLOW_S3_ACCESS_KEY")
    assert environment["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert server["depends_on"]["seaweedfs"] == {"condition": "service_healthy"}
