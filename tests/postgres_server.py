"""A throwaway PostgreSQL cluster for tests: ``initdb`` into a temporary folder, loopback only.

Use the session fixture from a test module (conftest stays untouched)::

    from tests.postgres_server import postgres_server  # noqa: F401

or the context manager ``running_postgres()`` directly. The cluster trusts the superuser
``medseg`` without a password (``initdb -A trust -U medseg``) and listens on 127.0.0.1 only, on a
free port, with its Unix socket inside the cluster's private folder; it has an empty database
``mlflow``. Durability is switched off (``fsync``, ``full_page_writes``), the cluster is
deleted at the end: it is for tests only.

Binaries: ``initdb``, ``postgres`` and ``pg_ctl`` from one folder, found on ``PATH`` or under
``/usr/lib/postgresql/*/bin`` (Debian/Ubuntu, newest major first). When they are missing the
fixture FAILS (it does not skip) with the command that installs them; ``.ci/provision.sh`` (run
by ``make test``) installs them (its ``have_postgres`` looks in the same places).

Running as root: ``initdb`` and ``postgres`` refuse to run as uid 0 (a server process with root
rights would turn any SQL-level compromise into a machine compromise). Under root, both run as
the unprivileged system account ``postgres`` (created by the distribution packages), or
``nobody`` when that does not exist. The switch is done by ``subprocess.Popen(user=, group=,
extra_groups=[])``: Python calls setgroups/setregid/setreuid in the forked child just before
``exec``, so it needs neither ``runuser``/``setpriv`` (util-linux, not on every image),
``su`` (needs a login shell, which ``nobody`` lacks, and goes through PAM) nor ``sudo`` (not
installed or not password-less everywhere), and it keeps the environment as given. As a normal
user nothing is switched and the same code runs. The cluster folder is made with
``mkdtemp`` in a temp folder that account can reach (pytest's own ``/tmp/pytest-of-root`` is
mode 0700, so it cannot be used) and is handed to the account with ``chown``; log files are
opened by the test process and passed as file descriptors, so the account never needs to
reach anything else.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HOST = "127.0.0.1"
SUPERUSER = "medseg"
INITDB_OPTIONS = ("-E", "UTF8", "--locale=C", "--no-sync")
# Durability off: a test cluster that is deleted afterwards need not survive a power cut.
THROWAWAY_SETTINGS = (
    "-c",
    "fsync=off",
    "-c",
    "full_page_writes=off",
    "-c",
    "synchronous_commit=off",
)
DATABASE = "mlflow"
BINARIES = ("initdb", "postgres", "pg_ctl")
INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, postgres, pg_ctl) were not found on PATH or under "
    "/usr/lib/postgresql/*/bin. Install them, e.g. on Debian/Ubuntu: "
    "`sudo apt-get update && sudo apt-get install -y --no-install-recommends postgresql` "
    "(Fedora/RHEL: `sudo dnf install postgresql-server`; macOS: `brew install postgresql@16`). "
    "`make test` installs them (.ci/provision.sh)."
)


class PostgresNotInstalled(RuntimeError):
    """The PostgreSQL server binaries are not on this machine."""


@dataclass(frozen=True)
class PostgresServer:
    """A running cluster: connection facts and where its files are."""

    host: str
    port: int
    user: str
    database: str
    folder: Path
    log_path: Path

    def uri(self, database: str | None = None) -> str:
        """SQLAlchemy/MLflow URI, e.g. ``postgresql+psycopg2://medseg@127.0.0.1:PORT/mlflow``.

        The driver is named: SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which
        medseg does not install; the ``server`` extra brings psycopg2.
        """
        netloc = f"{self.user}@{self.host}:{self.port}"
        return f"postgresql+psycopg2://{netloc}/{database or self.database}"

    def connect(self, database: str | None = None) -> Any:
        """A new psycopg2 connection (close it, e.g. with ``contextlib.closing``)."""
        return _connect(self.host, self.port, self.user, database or self.database)


def find_binaries() -> Path:
    """Folder holding ``initdb``, ``postgres`` and ``pg_ctl``.

    Raises:
        PostgresNotInstalled: no such folder on PATH or under /usr/lib/postgresql/*/bin.
    """
    candidates = [Path(found).parent for found in filter(None, map(shutil.which, BINARIES))]

    def major(folder: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", Path(folder).parent.name))

    candidates += map(Path, sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True))
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in BINARIES):
            return folder
    raise PostgresNotInstalled(INSTALL_HINT)


def _account() -> tuple[int, int] | None:
    """(uid, gid) to run the server as when we are root, else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root, and there is no 'postgres' or 'nobody' account to run as")


def _reachable(folder: Path, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` may traverse ``folder`` and all its parents (mode bits only)."""
    for path in (folder, *folder.parents):
        info = os.stat(path)
        if not (
            info.st_mode & stat.S_IXOTH
            or (info.st_uid == uid and info.st_mode & stat.S_IXUSR)
            or (info.st_gid == gid and info.st_mode & stat.S_IXGRP)
        ):
            return False
    return True


def _cluster_folder(account: tuple[int, int] | None) -> Path:
    for parent in (tempfile.gettempdir(), "/tmp", "/var/tmp"):
        if Path(parent).is_dir() and (account is None or _reachable(Path(parent), *account)):
            folder = Path(tempfile.mkdtemp(prefix="medseg-pg-", dir=parent))
            if account is not None:
                os.chown(folder, *account)
            return folder
    raise RuntimeError("no temporary folder the PostgreSQL account can reach (tried $TMPDIR, /tmp)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _psycopg2() -> Any:
    try:
        import psycopg2
    except ImportError as error:
        raise RuntimeError(
            "psycopg2 is missing: pip install -c constraints.txt -e '.[dev]'"
        ) from error
    return psycopg2


def _connect(host: str, port: int, user: str, database: str) -> Any:
    return _psycopg2().connect(host=host, port=port, user=user, dbname=database, connect_timeout=2)


def _tail(path: Path, size: int = 3000) -> str:
    return path.read_text(errors="replace")[-size:] if path.exists() else "(no log)"


@contextlib.contextmanager
def running_postgres(*, timeout_s: float = 60.0, attempts: int = 3) -> Iterator[PostgresServer]:
    """Create, start and yield a throwaway cluster with database ``mlflow``; stop and delete it.

    A port taken between choosing and binding it (other jobs share the machine) is retried on
    another port, up to ``attempts`` times.

    Raises:
        PostgresNotInstalled: the server binaries are missing (message says how to install).
        RuntimeError: initdb failed, or the server exited or did not accept connections within
            ``timeout_s``; the message carries the end of its log.
    """
    binaries = find_binaries()
    account = _account()
    as_account: dict[str, Any] = {}
    if account is not None:
        as_account = {"user": account[0], "group": account[1], "extra_groups": []}
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    folder = _cluster_folder(account)
    data, log_path = folder / "data", folder / "postgres.log"
    process: subprocess.Popen | None = None
    try:
        with (folder / "initdb.log").open("wb") as log:
            done = subprocess.run(
                [binaries / "initdb", "-D", data, "-A", "trust", "-U", SUPERUSER, *INITDB_OPTIONS],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=folder,
                env=env,
                check=False,
                **as_account,
            )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed; log ends:\n{_tail(folder / 'initdb.log')}")
        for attempt in range(1, attempts + 1):
            port = _free_port()
            server = [binaries / "postgres", "-D", data, "-h", HOST, "-p", str(port)]
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [*server, "-k", folder, *THROWAWAY_SETTINGS],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=folder,
                    env=env,
                    start_new_session=True,
                    **as_account,
                )
            deadline = time.monotonic() + timeout_s
            connection = None
            while connection is None:
                try:
                    connection = _connect(HOST, port, SUPERUSER, "postgres")
                except _psycopg2().OperationalError:  # not accepting connections yet
                    if process.poll() is not None or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
            if connection is not None:
                break
            log_text = _tail(log_path)
            if process.poll() is not None and "could not bind" in log_text and attempt < attempts:
                continue
            state = "exited" if process.poll() is not None else f"not ready in {timeout_s} s"
            raise RuntimeError(f"postgres on port {port} {state}; log ends:\n{log_text}")
        with contextlib.closing(connection):
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {DATABASE}")
        yield PostgresServer(HOST, port, SUPERUSER, DATABASE, folder, log_path)
    finally:
        if process is not None and process.poll() is None:
            _stop(binaries, data, process, env, as_account)
        shutil.rmtree(folder, ignore_errors=True)


def _stop(
    binaries: Path, data: Path, process: subprocess.Popen, env: dict, as_account: dict
) -> None:
    """``pg_ctl stop -m fast`` (disconnects clients); SIGKILL the process group if it lingers."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(
            [binaries / "pg_ctl", "stop", "-D", data, "-m", "fast", "-w", "-t", "30"],
            capture_output=True,
            cwd=data.parent,
            env=env,
            timeout=40,
            check=False,
            **as_account,
        )
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL cluster shared by the session; FAILS if PostgreSQL is missing."""
    try:
        find_binaries()
        missing = None
    except PostgresNotInstalled as error:
        missing = str(error)
    if missing is not None:  # outside the except block: one clear message, no chained traceback
        pytest.fail(missing, pytrace=False)
    with running_postgres() as server:
        yield server
