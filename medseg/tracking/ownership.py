"""Who owns an MLflow run, whether that process still lives, and the run files that let the
next command find the runs a killed one left RUNNING.

A process that opens a run records itself twice: as run tags (``medseg.owner.host``,
``medseg.owner.pid``, ``medseg.owner.start``, visible in the MLflow UI, updated when a run
is reopened to resume it) and as a run file ``<folder>/.medseg-runs/<run id>.json`` in the
folder the command works in (the pipeline's work dir, the training run dir, the batch's
OUT), removed when the run ends. A SIGKILL leaves the file behind; the next command in that
folder reads it and marks the run FAILED if its owner is gone (``medseg.tracking.stale``).

"Gone" is decided only where it can be decided: same host name, same kernel boot and same
PID namespace, and no process with that PID and start time (a zombie counts as gone). A run
owned by a process on another host or in another container is never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from medseg.io.atomic import write_json_atomic

RUNS_FOLDER = ".medseg-runs"
TAG_HOST = "medseg.owner.host"
TAG_PID = "medseg.owner.pid"
TAG_START = "medseg.owner.start"


@dataclass(frozen=True)
class ProcessIdentity:
    """One process, told apart from a later one that reuses its PID.

    ``start`` is ``"<boot id>/<pid namespace>/<start time in clock ticks>"`` on Linux and
    empty where that cannot be read.
    """

    host: str
    pid: int
    start: str

    @classmethod
    def current(cls) -> ProcessIdentity:
        """This process."""
        return cls.of(os.getpid())

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity:
        """The running process ``pid`` of this host."""
        return cls(socket.gethostname(), pid, _start_signature(pid))

    def tags(self) -> dict[str, str]:
        """The owner tags of a run this process opens."""
        return {TAG_HOST: self.host, TAG_PID: str(self.pid), TAG_START: self.start}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> ProcessIdentity | None:
        """The owner named by a run's tags, or None when it has none."""
        try:
            return cls(tags[TAG_HOST], int(tags[TAG_PID]), tags.get(TAG_START, ""))
        except (KeyError, ValueError):
            return None

    def describe(self) -> str:
        return f"process {self.pid} on {self.host}"

    def alive(self) -> bool | None:
        """True while the process runs, False once it is gone, None when this process cannot
        tell (another host, another container's PID namespace)."""
        if self.host != socket.gethostname():
            return None
        recorded = self.start.split("/")
        mine = _start_signature(os.getpid()).split("/")
        if len(recorded) == 3 and len(mine) == 3:
            if recorded[0] != mine[0]:
                return False  # the host rebooted since: every process of before is gone
            if recorded[1] != mine[1]:
                return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's process: it exists
        if _is_zombie(self.pid):
            return False
        now = _start_signature(self.pid)
        return not (self.start and now and now != self.start)


def _start_signature(pid: int) -> str:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink(f"/proc/{pid}/ns/pid")
        return f"{boot}/{namespace}/{_stat_fields(pid)[19]}"
    except (OSError, IndexError):
        return ""


def _stat_fields(pid: int) -> list[str]:
    """Fields of ``/proc/<pid>/stat`` after the command name (field 3, the state, first)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _is_zombie(pid: int) -> bool:
    try:
        return _stat_fields(pid)[0] == "Z"
    except (OSError, IndexError):
        return False


@dataclass(frozen=True)
class RunFile:
    """What a run file holds: the run, the store it lives in (a digest of its URI: no
    credentials on disk), what the run is for and who opened it."""

    run_id: str
    store: str
    role: str
    host: str
    pid: int
    start: str

    @property
    def owner(self) -> ProcessIdentity:
        return ProcessIdentity(self.host, self.pid, self.start)


def store_digest(tracking_uri: str) -> str:
    return hashlib.sha256(tracking_uri.encode("utf-8")).hexdigest()[:16]


def record_run(folder: Path, run_id: str, *, tracking_uri: str, role: str) -> None:
    """Write the run file of ``run_id`` (opened by this process) under ``folder``."""
    me = ProcessIdentity.current()
    entry = RunFile(run_id, store_digest(tracking_uri), role, me.host, me.pid, me.start)
    write_json_atomic(Path(folder) / RUNS_FOLDER / f"{run_id}.json", asdict(entry))


def forget_run(folder: Path, run_id: str) -> None:
    """Remove the run file of ``run_id`` (the run ended, or was marked)."""
    with contextlib.suppress(FileNotFoundError):
        (Path(folder) / RUNS_FOLDER / f"{run_id}.json").unlink()


def recorded_runs(folder: Path, tracking_uri: str) -> list[RunFile]:
    """The run files under ``folder`` of runs in the store at ``tracking_uri``; unreadable
    ones are skipped (a half-written file of a killed process has a ``.tmp-`` name)."""
    entries = []
    digest = store_digest(tracking_uri)
    for path in sorted((Path(folder) / RUNS_FOLDER).glob("*.json")):
        try:
            entry = RunFile(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            continue
        if entry.store == digest:
            entries.append(entry)
    return entries
