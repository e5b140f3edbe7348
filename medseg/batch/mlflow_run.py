"""Log one batch invocation as one MLflow run, through ``medseg.tracking.RunTracker``.

Logged: params (model URI, shard, workers and the prediction options), metrics (scans found,
in this shard, done, skipped, failed, seconds in total and per scan, mean volume per structure
over this shard's complete scans) and the artifacts ``summary.csv`` and ``failures.jsonl``.
Nothing that could identify a patient: no file paths (a model given as a folder is logged as a
hash of its path), no UIDs, no case ids; with ``--case-ids folder`` the two artifacts name
folders, so they are not uploaded then (tag ``artifacts_withheld``).

Logging never fails a batch: any error (an unreachable server, a refused value) becomes a
warning in the report. MLflow retries an unreachable HTTP server for minutes by default; set
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and ``MLFLOW_HTTP_REQUEST_TIMEOUT`` to fail faster.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.phi import hash_identifier

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "medseg-batch"
_REGISTRY_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/", "s3://", "gs://", "http")


@dataclass(frozen=True)
class TrackingOutcome:
    """The run that was logged, or why logging failed."""

    run_id: str | None = None
    warning: str | None = None


def loggable_model_uri(uri: str) -> str:
    """A registry/run URI as is; a local folder as ``folder:<hash of its absolute path>``."""
    if uri.startswith(_REGISTRY_SCHEMES):
        return uri
    return f"folder:{hash_identifier(str(Path(uri).expanduser().resolve()))}"


def log_batch_run(
    *,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    artifacts: list[Path],
    run_name: str,
    experiment: str = DEFAULT_EXPERIMENT,
    tracking_uri: str | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    killed: bool = False,
) -> TrackingOutcome:
    """Log one FINISHED run, or KILLED one (``killed``: the batch was stopped by a signal),
    nested under ``parent_run_id`` (an active run of this thread) when given; returns its id,
    or a warning instead of raising."""
    tracker = None
    try:
        from medseg.tracking import RunTracker

        tracker = RunTracker(tracking_uri=tracking_uri)
        with tracker.start(
            experiment=experiment,
            run_name=run_name,
            tags=dict(tags or {}),
            parent_run_id=parent_run_id,
        ):
            tracker.log_params(params)
            tracker.log_metrics(metrics, step=0)
            for path in artifacts:
                tracker.log_artifact(path)
            if killed:
                tracker.end(killed=True)
        return TrackingOutcome(run_id=tracker.run_id)
    except Exception as error:  # logging must never make a batch fail
        detail = str(error).splitlines()[0][:300] if str(error) else ""
        warning = f"batch not logged to MLflow ({type(error).__name__}): {detail}"
        logger.warning("%s", warning)
        return TrackingOutcome(run_id=getattr(tracker, "run_id", None), warning=warning)
