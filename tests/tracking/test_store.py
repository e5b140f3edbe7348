"""The up-front tracking store check (``medseg.tracking.store``) and the run files of
``medseg.tracking.ownership``: real sockets, a real HTTP server, real folders."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from medseg.tracking.ownership import RUNS_FOLDER, record_run, recorded_runs
from medseg.tracking.store import bounded_http_retries, display_uri, store_problem


@pytest.fixture(scope="module")
def health_server() -> Iterator[str]:
    """An HTTP server whose ``/<status>/health`` answers with that status code."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(int(self.path.split("/")[1]))
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("status", "problem"),
    [
        (200, None),
        (401, None),  # a proxy that wants credentials: the server is there
        (404, None),  # no /health route behind a proxy: still an answer
        (502, "MLflow tracking server not reachable: /health answered HTTP 502 Bad Gateway"),
        (503, "MLflow tracking server not reachable: /health answered HTTP 503"),
    ],
)
def test_an_http_answer_below_500_means_reachable(
    health_server: str, status: int, problem: str | None
) -> None:
    answer = store_problem(f"{health_server}/{status}")
    assert answer == problem if problem is None else answer.startswith(problem)


def test_a_sqlite_store_needs_a_writable_folder_or_an_existing_database(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert store_problem(f"sqlite:///{blocker}/mlflow.db").startswith(
        f"cannot write in {blocker}: "
    )
    fresh = tmp_path / "new" / "mlflow.db"
    assert store_problem(f"sqlite:///{fresh}") is None  # created on first use
    assert store_problem(f"sqlite:///{fresh}", write=False) == (
        "no MLflow database file there (give --tracking-uri or MLFLOW_TRACKING_URI)"
    )
    fresh.write_bytes(b"")
    assert store_problem(f"sqlite:///{fresh}", write=False) is None
    assert list(fresh.parent.iterdir()) == [fresh]  # the write check leaves nothing behind


def test_a_password_in_a_uri_is_not_shown() -> None:
    assert display_uri("https://alice:s3cret@mlflow.example.org/x") == (
        "https://alice:***@mlflow.example.org/x"
    )
    assert display_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_late_logging_bounds_mlflow_retries_only_while_it_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")  # stricter than the bound: kept
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "30")
    with bounded_http_retries():
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"
        assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "30"


def test_run_files_are_read_back_only_for_their_own_store(tmp_path: Path) -> None:
    record_run(tmp_path, "a" * 32, tracking_uri="http://one:5000", role="pipeline")
    record_run(tmp_path, "b" * 32, tracking_uri="http://two:5000", role="train")
    (tmp_path / RUNS_FOLDER / "broken.json").write_text("{half a record")
    [entry] = recorded_runs(tmp_path, "http://one:5000")
    assert (entry.run_id, entry.role, entry.pid) == ("a" * 32, "pipeline", os.getpid())
    assert entry.owner.alive() is True
