"""Runs left RUNNING by a killed process: found through their run files and marked FAILED.

See ``medseg.tracking.ownership`` for who owns a run and when its process counts as gone.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mlflow.entities import Run, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from medseg.tracking.ownership import ProcessIdentity, forget_run, recorded_runs
from medseg.tracking.store import check_tracking_store
from medseg.tracking.store import tracking_uri as resolve_tracking_uri
from medseg.tracking.tags import STALE_REASON, TAG_STALE, TAG_STALE_MARKED, now_iso

logger = logging.getLogger(__name__)


def mark_stale_runs(home: Path, tracking_uri: str | None = None) -> list[str]:
    """Mark FAILED the runs whose run files are under ``home`` and whose process is gone,
    with their RUNNING descendants of gone processes; return the ids marked.

    Each gets an end time and the tags ``medseg.stale`` (why) and ``medseg.stale.marked``
    (when). A run whose owner lives, or cannot be checked from this host, is left alone (with
    a warning in the second case). Call it before opening or reopening runs in ``home``: a
    resumed run is then marked first and reopened after, and ends FINISHED.

    Raises:
        TrackingUnavailableError: there are run files and the store cannot be reached.
    """
    uri = resolve_tracking_uri(tracking_uri)
    entries = recorded_runs(home, uri)
    if not entries:
        return []
    check_tracking_store(uri)
    client = MlflowClient(tracking_uri=uri)
    marked: list[str] = []
    for entry in entries:
        try:
            run = client.get_run(entry.run_id)
        except MlflowException as error:
            if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise
            forget_run(home, entry.run_id)
            continue
        if run.info.status != "RUNNING":
            forget_run(home, entry.run_id)
        elif _gone(entry.run_id, ProcessIdentity.from_tags(run.data.tags) or entry.owner):
            marked += _mark_failed(client, run)
            forget_run(home, entry.run_id)
    return marked


def _gone(run_id: str, owner: ProcessIdentity) -> bool:
    alive = owner.alive()
    if alive is None:
        logger.warning(
            "MLflow run %s is RUNNING for %s, which cannot be checked from here; left as is",
            run_id,
            owner.describe(),
        )
    return alive is False


def _mark_failed(client: MlflowClient, run: Run) -> list[str]:
    run_id = run.info.run_id
    client.log_batch(
        run_id, tags=[RunTag(TAG_STALE, STALE_REASON), RunTag(TAG_STALE_MARKED, now_iso())]
    )
    client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FAILED))
    owner = ProcessIdentity.from_tags(run.data.tags)
    logger.warning(
        "MLflow run %s (%s) marked FAILED: %s is gone",
        run_id,
        run.info.run_name,
        owner.describe() if owner else "its process",
    )
    marked = [run_id]
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'RUNNING'",
    )
    for child in children:
        child_owner = ProcessIdentity.from_tags(child.data.tags)
        if child_owner is not None and _gone(child.info.run_id, child_owner):
            marked += _mark_failed(client, child)
    return marked
