"""A real ``mlflow server`` for tests: SQLite (or any) backend, artifacts proxied over HTTP.

Use the session fixture from a test module (conftest stays untouched)::

    from tests.mlflow_server import mlflow_server  # noqa: F401

For another backend store (PostgreSQL, see ``tests/postgres_server.py``), call
``running_mlflow_server(tmp_path, backend_store_uri="postgresql+psycopg2://...")``.

The server runs with ``--serve-artifacts --artifacts-destination``, so clients read and write
artifacts through the server (``mlflow-artifacts:/`` URIs) the way a team set-up does, rather
than touching the artifact folder directly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

MLFLOW_EXECUTABLE = Path(sys.executable).parent / "mlflow"


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _healthy(url: str, path: str = "/health") -> bool:
    try:
        with urllib.request.urlopen(f"{url}{path}", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (uvicorn worker, job runner), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def running_mlflow_server(
    tmp_path: Path,
    *,
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 60.0,
) -> Iterator[str]:
    """Start ``mlflow server`` on a free port under ``tmp_path``; yield its URL; stop it.

    ``backend_store_uri`` defaults to ``sqlite:///<tmp_path>/mlflow.db``. Artifacts go through
    the server to ``artifacts_destination`` (default ``<tmp_path>/artifacts``; an
    ``s3://BUCKET/...`` URI with the store's variables in ``env``, see
    ``tests/object_store.py``); the log is ``<tmp_path>/server.log``.

    Raises:
        RuntimeError: the server exited or was not healthy within ``timeout_s``; the message
            carries the end of its log.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        str(MLFLOW_EXECUTABLE),
        "server",
        "--backend-store-uri",
        backend_store_uri or f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts_destination or str(tmp_path / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # The job runner (a second process) serves MLflow's GenAI jobs, which tests do not use.
    server_env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
    server_env.pop("MLFLOW_TRACKING_URI", None)
    log_path = tmp_path / "server.log"
    with _running(command, env=server_env, log_path=log_path, url=url, timeout_s=timeout_s):
        yield url


@contextlib.contextmanager
def _running(
    command: list[str],
    *,
    env: dict[str, str],
    log_path: Path,
    url: str,
    timeout_s: float,
    health: str = "/health",
) -> Iterator[None]:
    """Run ``command`` in a session of its own until the block ends, once ``url + health``
    answers; stop it (and its children) afterwards.

    Raises:
        RuntimeError: it exited or did not answer within ``timeout_s`` (with its log's end).
    """
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout_s
        while not _healthy(url, health):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                state = "exited" if process.poll() is not None else f"silent for {timeout_s} s"
                raise RuntimeError(f"{command[1]} at {url} {state}; log ends:\n{tail}")
            time.sleep(0.25)
        yield
    finally:
        stop_process_group(process)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of one real MLflow tracking + registry + artifact server shared by the session."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


@contextlib.contextmanager
def running_model_server(
    model_uri: str, *, tracking_uri: str, log_path: Path, timeout_s: float = 180.0
) -> Iterator[str]:
    """Start ``mlflow models serve -m MODEL_URI --env-manager local`` on a free loopback port
    (the registry at ``tracking_uri``); yield its URL once ``/ping`` answers; stop it.

    Raises:
        RuntimeError: the server exited or did not answer within ``timeout_s`` (with its log).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(MLFLOW_EXECUTABLE), "models", "serve", "-m", model_uri, "--env-manager"]
    command += ["local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # it runs `uvicorn` by name: the venv's, also when the venv is not activated
    path = os.pathsep.join([str(MLFLOW_EXECUTABLE.parent), os.environ.get("PATH", "")])
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": path}
    with _running(
        command, env=env, log_path=log_path, url=url, timeout_s=timeout_s, health="/ping"
    ):
        yield url
