"""Start a real ``python -m medseg`` in its own session, wait for it to be mid-work, signal it,
and see which of its processes are still alive (Linux ``/proc``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
STOP_SECONDS = 10.0  # the bound: a stopped command exits, and its children end, within it
START_SECONDS = 300.0  # generous: imports and model loading on a busy 2-core machine


@dataclass(frozen=True)
class LiveProcess:
    pid: int
    parent: int
    session: int
    command: str


def live_processes() -> list[LiveProcess]:
    """Every process that is alive (zombies have ended)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if fields[0] not in ("Z", "X"):
            found.append(LiveProcess(int(entry.name), int(fields[1]), int(fields[3]), command))
    return found


def session_processes(session_id: int) -> list[LiveProcess]:
    """The live processes of session ``session_id``."""
    return [process for process in live_processes() if process.session == session_id]


def children(pid: int) -> list[LiveProcess]:
    """The live children of process ``pid``."""
    return [process for process in live_processes() if process.parent == pid]


def wait_until_session_ends(session_id: int, timeout: float = STOP_SECONDS) -> list[LiveProcess]:
    """Wait up to ``timeout`` for every process of the session to end; returns the survivors."""
    return _wait_until_none(lambda: session_processes(session_id), timeout)


def wait_until_gone(pids: list[int], timeout: float = STOP_SECONDS) -> list[LiveProcess]:
    """Wait up to ``timeout`` for the processes ``pids`` to end; returns the survivors."""
    return _wait_until_none(lambda: [p for p in live_processes() if p.pid in pids], timeout)


def _wait_until_none(alive: Callable[[], list[LiveProcess]], timeout: float) -> list[LiveProcess]:
    deadline = time.monotonic() + timeout
    while (survivors := alive()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return survivors


@dataclass
class MedsegProcess:
    """A ``python -m medseg`` subprocess that leads its own session (and process group).

    As a context manager it kills whatever is left of the session on leaving the block.
    """

    process: subprocess.Popen
    log: Path

    @classmethod
    def start(
        cls,
        arguments: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        *,
        module: str | None = "medseg",
    ) -> MedsegProcess:
        """Start ``python -m MODULE ARGUMENTS`` (``medseg`` by default; ``python ARGUMENTS``
        with ``module`` None) with stdout and stderr going to the file ``log``."""
        environment = {**os.environ, **(env or {})}
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPOSITORY), environment.get("PYTHONPATH")])
        )
        with log.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, *(["-m", module] if module else []), *arguments],
                cwd=REPOSITORY,
                env=environment,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        return cls(process, log)

    def __enter__(self) -> MedsegProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill_everything()

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Wait (up to ``START_SECONDS``) until ``condition()`` holds while the process runs."""
        deadline = time.monotonic() + START_SECONDS
        while not condition():
            assert self.process.poll() is None, f"ended before {what}:\n{self.output()}"
            assert time.monotonic() < deadline, f"not {what} in {START_SECONDS} s"
            time.sleep(0.02)

    def signal(self, signum: int, *, whole_group: bool = False) -> float:
        """Send ``signum`` to the process (or to its whole group); returns the time sent."""
        if whole_group:
            os.killpg(self.pid, signum)
        else:
            os.kill(self.pid, signum)
        return time.monotonic()

    def wait_exit(self, timeout: float = STOP_SECONDS) -> tuple[int | None, float]:
        """``(exit code, seconds waited)``; the code is None if it is still running."""
        start = time.monotonic()
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - start

    def kill_everything(self) -> None:
        """Clean-up after a test: SIGKILL whatever is left of the session."""
        for survivor in session_processes(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(survivor.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
