"""Log one batch invocation as one MLflow run, through ``medseg.tracking.runs.RunTracker``.

Logged: params (model URI, shard, workers and the prediction options), metrics (scans found,
in this shard, done, skipped, failed, seconds in total and per scan, mean volume per structure
over this shard's complete scans) and the artifacts ``summary.csv`` and ``failures.jsonl``.
Nothing that could identify a patient: no file paths (a model given as a folder is logged as a
hash of its path), no UIDs, no case ids; with ``--case-ids folder`` the two artifacts name
folders, so they are not uploaded then (tag ``artifacts_withheld``).

Logging never fails a batch: any error (an unreachable server, a refused value) becomes a
warning in the report, and it comes in seconds: the store is probed first (a refused, unknown
or silent server is given up after ``medseg.tracking.store.probe_seconds()``), and the
logging itself runs with MLflow's retries bounded (``bounded_http_retries``) instead of
MLflow's minutes of backoff. A batch killed while it logs leaves a run file in OUT; the next
batch there marks that run FAILED before it logs its own
(``medseg.tracking.stale.mark_stale_runs``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.errors import TrackingUnavailableError
from medseg.phi import hash_identifier
from medseg.tracking.store import bounded_http_retries, require_tracking_store

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
    home: Path | None = None,
    killed: bool = False,
) -> TrackingOutcome:
    """Log one FINISHED run, or a KILLED one (``killed``: the batch was stopped by a signal),
    nested under ``parent_run_id`` (an active run of this thread) when given; returns its id,
    or a warning instead of raising.

    ``home`` (the batch's OUT) holds the run file while the run is open; stale runs of
    killed batches there are marked FAILED first.
    """
    tracker = None
    try:
        require_tracking_store(tracking_uri)  # seconds, and before mlflow is imported
        from medseg.tracking.runs import RunTracker
        from medseg.tracking.stale import mark_stale_runs

        with bounded_http_retries():
            if home is not None:
                mark_stale_runs(home, tracking_uri)
            tracker = RunTracker(tracking_uri=tracking_uri, home=home, role="batch")
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
        detail = (str(error).splitlines() or [""])[0][:300]
        kind = "" if isinstance(error, TrackingUnavailableError) else f" ({type(error).__name__})"
        warning = f"batch not logged to MLflow{kind}: {detail}"
        logger.warning("%s", warning)
        return TrackingOutcome(run_id=getattr(tracker, "run_id", None), warning=warning)
