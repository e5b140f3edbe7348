"""Worker pools never outlive their parent, and an exception does not wait for busy workers."""

from __future__ import annotations

import concurrent.futures.process
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from medseg import shutdown
from medseg.parallel import process_pool
from tests.faults.processes import (
    MedsegProcess,
    session_processes,
    wait_until_gone,
    wait_until_session_ends,
)
from tests.fresh_interpreter import in_fresh_interpreter
from tests.parallel_tasks import sleep_after_saying_so

ManagerThread = concurrent.futures.process._ExecutorManagerThread
START_METHODS = ["forkserver", "default"]  # default: fork on Linux, for the decoder pools


def _wait_for_files(folder: Path, count: int, timeout: float = 120.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(list(folder.iterdir())) < count:
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.02)
    return [int(path.name) for path in folder.iterdir()]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


@pytest.mark.parametrize("start_method", START_METHODS)
def test_leaving_a_pool_by_an_exception_kills_its_busy_workers(
    tmp_path: Path, start_method: str
) -> None:
    """ProcessPoolExecutor alone would wait for every queued sleep (minutes)."""
    method = None if start_method == "default" else start_method
    started = None
    with pytest.raises(KeyError), process_pool(2, start_method=method) as pool:
        for _ in range(6):
            pool.submit(sleep_after_saying_so, str(tmp_path))
        workers = _wait_for_files(tmp_path, 2)
        started = time.monotonic()
        raise KeyError("stop")
    assert time.monotonic() - started < 10
    assert not any(_alive(pid) for pid in workers)
    assert len(list(tmp_path.iterdir())) == 2  # the queued items never started


@in_fresh_interpreter  # it sends SIGTERM to its own process (tests/fresh_interpreter.py: why)
def test_a_stop_while_the_pool_starts_its_manager_thread_stays_a_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The signal lands before the pool's manager thread started: that thread cannot be joined,
    and the RuntimeError saying so must not replace the stop (a case then failed "unexpectedly"
    and the command exited 1 instead of 143)."""

    workers: list[int] = []

    def signalled_before_starting(thread: ManagerThread) -> None:
        workers.extend(thread.processes)  # forked already, before the manager thread starts
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler raises here, in the main thread
        raise AssertionError("the signal did not arrive")

    monkeypatch.setattr(
        concurrent.futures.process._ExecutorManagerThread, "start", signalled_before_starting
    )
    with (
        shutdown.stop_signals(),
        pytest.raises(shutdown.ShutdownRequested),
        process_pool(2, start_method=None) as pool,
    ):
        pool.submit(abs, -1)
    assert len(workers) == 2
    assert wait_until_gone(workers) == []


def test_an_error_that_replaced_a_stop_raises_the_stop_again() -> None:
    stop = shutdown.ShutdownRequested(signal.SIGTERM)
    try:
        try:
            raise stop
        except shutdown.ShutdownRequested:
            raise RuntimeError("cannot join thread before it is started")  # noqa: B904
    except RuntimeError as error:
        with pytest.raises(shutdown.ShutdownRequested) as raised:
            shutdown.reraise_if_stopping(error)
    assert raised.value is stop
    shutdown.reraise_if_stopping(RuntimeError("a plain bug"))  # no stop behind it: returns


@pytest.mark.parametrize("start_method", START_METHODS)
def test_no_worker_outlives_a_parent_killed_with_sigkill(tmp_path: Path, start_method: str) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    parent = MedsegProcess.start(
        [str(busy), start_method], tmp_path / "log", module="tests.parallel_tasks"
    )
    try:
        parent.wait_for(lambda: len(list(busy.iterdir())) == 2, "both workers were busy")
        assert len(session_processes(parent.pid)) >= 3  # the parent and its two workers
        parent.signal(signal.SIGKILL)
        parent.wait_exit()
        assert wait_until_session_ends(parent.pid) == []
    finally:
        parent.kill_everything()


@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_worker_obeys_sigterm_from_its_parent_only(tmp_path: Path, start_method: str) -> None:
    """A scheduler's SIGTERM to the whole group is left to the parent; the parent's own
    ``terminate()`` (multiprocessing and DataLoader clean-up) still ends a worker."""
    method = None if start_method == "default" else start_method
    with process_pool(1, start_method=method) as pool:
        pool.submit(sleep_after_saying_so, str(tmp_path), 5.0)
        (worker,) = _wait_for_files(tmp_path, 1)
        subprocess.run(["kill", "-TERM", str(worker)], check=True)  # sent by another process
        time.sleep(1)
        assert _alive(worker)
        os.kill(worker, signal.SIGTERM)  # sent by this process, its parent
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(worker)
        pool.stop()
