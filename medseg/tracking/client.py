"""The MLflow client pointed at one store: its URI made process-wide, experiments found or
created with a sane artifact location, runs looked up.

MLflow's fluent API is process-wide, so each entry point calls ``activate`` with the URI it
was given (model logging needs the fluent active run) without leaving it in
``MLFLOW_TRACKING_URI``. Experiments created here in a SQLite store get
``<db folder>/artifacts/<experiment>`` as their artifact location, because MLflow's own default
(``./mlruns`` relative to whatever the working directory happens to be) separates artifacts
from their database as soon as the cwd changes.
"""

from __future__ import annotations

import re
from os import environ
from pathlib import Path
from urllib.parse import unquote

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient

from medseg.errors import TrackingError
from medseg.tracking.store import require_tracking_store, tracking_uri


def require_run(run_id: str, *, tracking_uri: str | None = None) -> str:
    """Check that the store is usable and holds run ``run_id``; return the store's URI.

    Raises:
        TrackingUnavailableError: the store cannot be reached or written.
        TrackingError: there is no such run.
    """
    uri = require_tracking_store(tracking_uri)
    try:
        MlflowClient(tracking_uri=uri).get_run(run_id)
    except MlflowException as error:
        raise TrackingError(f"run {run_id}: {error.message}") from error
    return uri


def activate(explicit: str | None) -> str:
    """Resolve ``tracking_uri(explicit)``, point mlflow's process-wide client at it, return it."""
    uri = tracking_uri(explicit)
    if (db := sqlite_path(uri)) is not None:
        (db.parent / "artifacts").mkdir(parents=True, exist_ok=True)
    callers_env = environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    # set_tracking_uri also exports MLFLOW_TRACKING_URI; restore the caller's value so the
    # next tracking_uri(None) still means "their environment", not "whatever ran last".
    if callers_env is None:
        environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        environ["MLFLOW_TRACKING_URI"] = callers_env
    return uri


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return None
    return Path(unquote(uri[len("sqlite:///") :])).resolve()


def find_or_create_experiment(client: MlflowClient, uri: str, name: str) -> str:
    """Id of the experiment ``name``, created with a sane artifact location if it is new.

    Raises:
        TrackingError: the experiment exists but is deleted.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if (db := sqlite_path(uri)) is not None:
            folder = re.sub(r"[^A-Za-z0-9._-]", "_", name)
            location = (db.parent / "artifacts" / folder).as_uri()
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException as error:  # another process created it first
            if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage == "deleted":  # None: deleted for good
        raise TrackingError(f"experiment {name!r} is deleted; restore it or use another name")
    return experiment.experiment_id
