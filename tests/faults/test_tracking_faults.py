"""A tracking server that refuses, does not resolve or never answers costs seconds, not minutes.

Commands that need the server (``predict`` with a registry model, ``evaluate --run-id``) stop
before their work with one line naming the URI and exit code 2. Logging after the work (a
batch with a model folder) becomes a warning; the outputs and the exit code stay what the
scans made them. Real sockets, real subprocesses: a hang shows up as a subprocess timeout.
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from medseg.demo.phantom import make_phantom
from medseg.io.nifti import write_nifti
from tests.phantoms import write_phantom_nifti
from tests.tiny_dataset import TinyDataset

UNRESOLVABLE = "http://medseg-no-such-host.invalid:5000"
PROBLEM = {  # fault -> what the one error line says about it
    "refused": "connection to port",
    "unresolvable": "host name 'medseg-no-such-host.invalid' not found",
    "silent": "no answer within 5 s",
}
HANG_LIMIT_S = 120
AFTER_WORK_LIMIT_S = 60  # the old behaviour: minutes of MLflow retries; a subprocess timeout fails


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def silent_server() -> Iterator[str]:
    """URL of a server that accepts TCP connections and never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_hold() -> None:
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept_and_hold, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


@pytest.fixture(params=sorted(PROBLEM))
def unreachable(request: pytest.FixtureRequest, silent_server: str) -> tuple[str, str]:
    """``(tracking URI, what the error says)`` for each kind of unreachable server."""
    uri = {
        "refused": f"http://127.0.0.1:{_closed_port()}",
        "unresolvable": UNRESOLVABLE,
        "silent": silent_server,
    }[request.param]
    return uri, PROBLEM[request.param]


@pytest.fixture(scope="module")
def model_folder(tiny_dataset: TinyDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A packaged tiny U-Net as a local folder: no tracking server needed to load it."""
    from mlflow.artifacts import download_artifacts

    from tests.packaged_model import build_packaged_model

    root = tmp_path_factory.mktemp("folder_model")
    uri, tracking = build_packaged_model(tiny_dataset.plan, root)
    return Path(download_artifacts(uri, dst_path=str(root / "model"), tracking_uri=tracking))


def _write_small_scan(path: Path) -> None:
    """A corner of a phantom: a few sliding windows whatever the model's plan, so seconds."""
    ct, _ = make_phantom(seed=0, shape=(24, 20, 16), spacing_mm=(2.0, 2.0, 2.0))
    write_nifti(ct.to_closest_ras(), path)


def _medseg(*arguments: object) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    environment.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "medseg", *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=HANG_LIMIT_S,
        env=environment,
    )


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def test_the_store_check_names_the_problem_within_seconds(unreachable: tuple[str, str]) -> None:
    from medseg.errors import TrackingUnavailableError
    from medseg.tracking.store import check_tracking_store

    uri, problem = unreachable
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError) as caught:
        check_tracking_store(uri)
    assert time.monotonic() - started < 15
    assert caught.value.where == uri
    assert problem in caught.value.problem
    assert str(caught.value).startswith(f"{uri}: MLflow tracking server not reachable: ")


def test_a_database_store_that_refuses_is_named() -> None:
    from medseg.tracking.store import store_problem

    port = _closed_port()
    assert store_problem(f"postgresql+psycopg2://medseg:secret@127.0.0.1:{port}/mlflow") == (
        f"MLflow database server not reachable: connection to port {port} refused"
    )


def test_predict_with_a_registry_model_stops_before_any_work(
    unreachable: tuple[str, str], tmp_path: Path
) -> None:
    uri, problem = unreachable
    scan = write_phantom_nifti(tmp_path / "scan.nii.gz")
    out = tmp_path / "out"
    result = _medseg(
        "predict", scan, "--model", "models:/tiny@champion", "--tracking-uri", uri, "--out", out
    )
    assert result.returncode == 2, result.stderr[-3000:]
    line = _one_error_line(result.stderr)
    assert line.startswith(f"error: {uri}: MLflow tracking server not reachable: ")
    assert problem in line
    assert not out.exists()


@pytest.mark.parametrize("command", ["train", "run"])
def test_train_and_run_stop_before_any_work(command: str, tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    for name in ("manifest.jsonl", "pipeline.yaml", "plan.json"):
        (tmp_path / name).write_text("not read before the tracking store is checked\n")
    arguments = {
        "train": ["--manifest", tmp_path / "manifest.jsonl", "--plan", tmp_path / "plan.json",
                  "--run-dir", tmp_path / "work"],
        "run": [tmp_path / "pipeline.yaml", "--work-dir", tmp_path / "work"],
    }[command]  # fmt: skip
    result = _medseg(command, *arguments, "--tracking-uri", uri)
    assert result.returncode == 2, result.stderr[-3000:]
    assert _one_error_line(result.stderr).startswith(f"error: {uri}: ")
    inputs = ["manifest.jsonl", "pipeline.yaml", "plan.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == inputs  # no cache, no work dir


def test_a_batch_with_a_model_folder_finishes_its_scans_and_warns(
    unreachable: tuple[str, str], model_folder: Path, tmp_path: Path
) -> None:
    uri, problem = unreachable
    scans = tmp_path / "scans"
    scans.mkdir()
    _write_small_scan(scans / "good.nii.gz")
    (scans / "broken.nii.gz").write_bytes(b"\x1f\x8b not a NIfTI file")
    out = tmp_path / "out"
    result = _medseg(
        "batch", scans, "--model", model_folder, "--out", out, "--tracking-uri", uri,
        "--overlap", "0", "--workers", "1",
    )  # fmt: skip
    exited = time.time()
    assert result.returncode == 1, result.stderr[-3000:]  # one scan failed, one is done
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert sorted(row["status"] for row in rows) == ["done", "failed"]
    assert f"batch not logged to MLflow: {uri}: " in result.stderr
    assert problem in result.stderr
    assert "Traceback" not in result.stderr
    # MLflow's own retries took minutes here (266 s); the margin is for a loaded 2-core machine
    assert exited - (out / "summary.csv").stat().st_mtime < AFTER_WORK_LIMIT_S


def test_evaluate_into_a_run_stops_before_any_work(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    labels = write_phantom_nifti(tmp_path / "image.nii.gz", label_path=tmp_path / "ref.nii.gz")
    assert labels.exists()
    out = tmp_path / "report"
    result = _medseg(
        "evaluate", tmp_path / "ref.nii.gz", tmp_path / "ref.nii.gz", "--out", out,
        "--run-id", "0123456789abcdef", "--tracking-uri", uri,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert _one_error_line(result.stderr).startswith(f"error: {uri}: ")
    assert not out.exists()


def test_predict_with_a_registry_model_and_no_database_names_the_store(tmp_path: Path) -> None:
    database = tmp_path / "nowhere" / "mlflow.db"
    scan = write_phantom_nifti(tmp_path / "scan.nii.gz")
    result = _medseg(
        "predict", scan, "--model", "models:/tiny@champion",
        "--tracking-uri", f"sqlite:///{database}", "--out", tmp_path / "out",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    line = _one_error_line(result.stderr)
    assert line == f"error: sqlite:///{database}: no MLflow database file there " + (
        "(give --tracking-uri or MLFLOW_TRACKING_URI)"
    )
    assert not database.exists()  # not silently created empty


def _evaluation_files(folder: Path) -> tuple[dict[str, Path], dict]:
    folder.mkdir()
    paths = {"json": folder / "summary.json", "html": folder / "report.html"}
    for path in paths.values():
        path.write_text("{}")
    return paths, {"mean": {"dice": 0.75}, "structures": {"liver": {"dice": 0.75, "hd95": None}}}


def test_evaluate_logs_into_a_run_and_keeps_its_status(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from medseg.evaluate.report import log_to_run
    from medseg.tracking.runs import RunTracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = RunTracker(uri).start(experiment="evaluate", run_name="train", tags={})
    tracker.end(failed=True)
    paths, result = _evaluation_files(tmp_path / "report")
    assert log_to_run(paths, result, run_id=tracker.run_id, tracking_uri=uri) is None
    run = MlflowClient(uri).get_run(tracker.run_id)
    assert run.info.status == "FAILED"  # logging a report does not make a failed run finished
    assert run.data.metrics == {"eval_mean_dice": 0.75, "eval_dice_liver": 0.75}


def test_evaluate_logging_to_a_server_gone_after_the_work_is_a_warning(tmp_path: Path) -> None:
    from medseg.evaluate.report import log_to_run

    uri = f"http://127.0.0.1:{_closed_port()}"
    paths, result = _evaluation_files(tmp_path / "report")
    started = time.monotonic()
    warning = log_to_run(paths, result, run_id="0123456789abcdef", tracking_uri=uri)
    assert time.monotonic() - started < 15
    assert warning is not None
    assert warning.startswith(f"evaluation not logged to MLflow run 0123456789abcdef: {uri}: ")
    assert all(path.read_text() == "{}" for path in paths.values())
