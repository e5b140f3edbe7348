"""Is the MLflow tracking store usable? Answered in seconds, before work starts.

MLflow retries an HTTP tracking server for minutes by default (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``
7 times with exponential backoff, ``MLFLOW_HTTP_REQUEST_TIMEOUT`` 120 s per attempt): right for
a busy server that rate-limits, wrong for one that is not there. So medseg does two things,
and leaves MLflow's own settings alone otherwise (a healthy, busy server keeps MLflow's
patient retries while a model trains):

- ``check_tracking_store`` before a command's work starts: one plain ``GET <uri>/health``
  (HTTP/HTTPS) or one TCP connection (a database URI such as ``postgresql://``), no retries,
  all within ``probe_seconds()`` (5 s; ``MEDSEG_TRACKING_PROBE_SECONDS``); a local SQLite or
  file store is checked for a writable folder (or, when only read, an existing database).
  Any answer from the server counts as reachable except a 5xx (a proxy without its server).
  A failure is ``TrackingUnavailableError``: ``error: <uri>: <problem>`` and exit code 2.
- ``bounded_http_retries`` around logging that happens after the work is done (a batch's
  run, ``evaluate --run-id``): MLflow's retry count, backoff and timeout are lowered to
  ``LATE_LOGGING_LIMITS`` for its duration only (a stricter user setting is kept), so a
  server that went away while the work ran costs seconds, not minutes.

No mlflow import here: MLflow reads its retry settings from the environment at every request.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

from medseg.errors import TrackingUnavailableError

PROBE_SECONDS_ENV = "MEDSEG_TRACKING_PROBE_SECONDS"
DEFAULT_PROBE_SECONDS = 5.0
LATE_LOGGING_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": 2,
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": 1,
    "MLFLOW_HTTP_REQUEST_TIMEOUT": 5,
}
"""At most 3 attempts of 5 s with 1-2 s between them per request, instead of ~7 x 120 s."""

SERVED_BY_STORE = ("models:/", "runs:/", "mlflow-artifacts:/")
"""Model URIs that only the tracking store can resolve."""

_DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
_UNREACHABLE = "MLflow tracking server not reachable"


def probe_seconds() -> float:
    """How long the up-front check may take: ``$MEDSEG_TRACKING_PROBE_SECONDS`` or 5 s."""
    try:
        seconds = float(os.environ.get(PROBE_SECONDS_ENV, DEFAULT_PROBE_SECONDS))
    except ValueError:
        return DEFAULT_PROBE_SECONDS
    return seconds if seconds > 0 else DEFAULT_PROBE_SECONDS


def display_uri(uri: str) -> str:
    """``uri`` without the password of its user info, for messages."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def tracking_uri(explicit: str | None = None) -> str:
    """Tracking URI: ``explicit`` > env ``MLFLOW_TRACKING_URI`` > the embedded SQLite default.

    The default is ``sqlite:///<base>/mlruns/mlflow.db`` with ``<base>`` = ``$MEDSEG_HOME`` or
    the current working directory, made absolute so that a later ``chdir`` changes nothing.

    Example:
        >>> tracking_uri("http://127.0.0.1:5000")
        'http://127.0.0.1:5000'
    """
    if explicit:
        return explicit
    if from_env := os.environ.get("MLFLOW_TRACKING_URI"):
        return from_env
    base = Path(os.environ.get("MEDSEG_HOME") or Path.cwd()).expanduser().resolve()
    return f"sqlite:///{base / 'mlruns' / 'mlflow.db'}"


def require_tracking_store(explicit: str | None = None, *, write: bool = True) -> str:
    """``tracking_uri(explicit)``, checked usable now: for commands to call before their work.

    Raises:
        TrackingUnavailableError: see ``check_tracking_store``.
    """
    uri = tracking_uri(explicit)
    check_tracking_store(uri, write=write)
    return uri


def require_store_for_model(model_uri: str, explicit: str | None = None) -> None:
    """Check the store (for reading) when ``model_uri`` is one only it can resolve
    (``models:/``, ``runs:/``, ``mlflow-artifacts:/``); a model folder needs no store.

    Raises:
        TrackingUnavailableError: see ``check_tracking_store``.
    """
    if model_uri.startswith(SERVED_BY_STORE):
        require_tracking_store(explicit, write=False)


def check_tracking_store(uri: str, *, write: bool = True) -> None:
    """Raise ``TrackingUnavailableError`` unless the store at ``uri`` can be used now.

    ``write=False`` for commands that only read from it (loading a registered model).

    Raises:
        TrackingUnavailableError: the server is refused, unresolvable, silent or answers with
            a server error; a local store's folder cannot be written (or its database is
            missing when only read).
    """
    problem = store_problem(uri, write=write)
    if problem is not None:
        raise TrackingUnavailableError(display_uri(uri), problem)


def store_problem(uri: str, *, write: bool = True) -> str | None:
    """What stops the store at ``uri`` from being used now, or None (see the module doc)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    dialect = scheme.split("+")[0]
    if scheme in ("http", "https"):
        import requests  # imported here, not in the probe, whose time is the server's

        return _within(probe_seconds(), lambda: _http_problem(requests, uri, parts))
    if dialect in _DATABASE_PORTS and parts.hostname:
        host, port = parts.hostname, parts.port or _DATABASE_PORTS[dialect]
        server = "MLflow database server not reachable"
        return _within(probe_seconds(), lambda: _connect_problem(host, port, server))
    if dialect == "sqlite":
        path = unquote(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            return None
        return _database_file_problem(Path(path), write=write)
    if scheme == "file" or (not scheme and uri):
        folder = Path(unquote(parts.path) if scheme else uri).expanduser()
        if not write:
            return None if folder.is_dir() else "no such MLflow store folder"
        return _folder_problem(folder)
    return None  # databricks, uc, ...: MLflow's own clients handle them


def _within(seconds: float, probe: Callable[[], str | None]) -> str | None:
    """``probe()``'s answer, or "no answer" when it takes longer than ``seconds``.

    The probe runs in a daemon thread because name resolution has no timeout of its own; a
    thread still stuck in it is abandoned and cannot hold up the exit of the process.
    """
    answers: list[str | None] = []

    def answer() -> None:
        try:
            answers.append(probe())
        except Exception as error:  # an answer nobody foresaw is still an answer
            answers.append(f"{_UNREACHABLE}: {_first_line(error)}")

    thread = threading.Thread(target=answer, name="medseg-tracking-probe", daemon=True)
    thread.start()
    thread.join(seconds)
    if not answers:
        return f"{_UNREACHABLE}: no answer within {seconds:g} s"
    return answers[0]


def _connect_problem(host: str, port: int, server: str = _UNREACHABLE) -> str | None:
    seconds = probe_seconds()
    try:
        with socket.create_connection((host, port), timeout=seconds):
            return None
    except socket.gaierror as error:
        return f"{server}: host name {host!r} not found ({error.strerror})"
    except ConnectionRefusedError:
        return f"{server}: connection to port {port} refused"
    except TimeoutError:
        return f"{server}: no answer within {seconds:g} s"
    except OSError as error:
        return f"{server}: {error.strerror or error}"


def _http_problem(requests: ModuleType, uri: str, parts: SplitResult) -> str | None:
    # Without a proxy, connect first: its errors name the problem better than requests' do.
    if not requests.utils.get_environ_proxies(uri) and parts.hostname:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        if (problem := _connect_problem(parts.hostname, port)) is not None:
            return problem
    seconds = probe_seconds()
    verify: bool | str = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1"):
        verify = False
    try:
        response = requests.get(
            f"{uri.rstrip('/')}/health",
            timeout=seconds,
            verify=verify,
            cert=os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH") or None,
        )
    except requests.Timeout:
        return f"{_UNREACHABLE}: no answer within {seconds:g} s"
    except requests.exceptions.SSLError as error:
        return f"{_UNREACHABLE}: TLS failed ({_first_line(error)})"
    except requests.RequestException as error:
        return f"{_UNREACHABLE}: {_first_line(error)}"
    if response.status_code >= 500:
        return f"{_UNREACHABLE}: /health answered HTTP {response.status_code} {response.reason}"
    return None


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:200]


def _database_file_problem(database: Path, *, write: bool) -> str | None:
    if not write:
        if not database.is_file():
            return "no MLflow database file there (give --tracking-uri or MLFLOW_TRACKING_URI)"
        return None if os.access(database, os.R_OK) else "the database file is not readable"
    if database.exists() and not os.access(database, os.R_OK | os.W_OK):
        return "the database file is not writable"
    return _folder_problem(database.parent)


def _folder_problem(folder: Path) -> str | None:
    """None when a file can be created in ``folder`` (created if missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".medseg-write-check-"):
            return None
    except OSError as error:
        return f"cannot write in {folder}: {error.strerror or error}"


@contextlib.contextmanager
def bounded_http_retries() -> Iterator[None]:
    """Lower MLflow's HTTP retry settings to ``LATE_LOGGING_LIMITS`` inside the block.

    Changes the process environment, so use it where no other thread logs to MLflow.
    """
    saved = {name: os.environ.get(name) for name in LATE_LOGGING_LIMITS}
    for name, limit in LATE_LOGGING_LIMITS.items():
        value = saved[name]
        try:
            current = int(value) if value is not None else None
        except ValueError:
            current = None
        os.environ[name] = str(limit if current is None else min(current, limit))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
