"""One MLflow run (``RunTracker``): params, metrics, artifacts and tags, ended on exit.

Every run is tagged with the process that owns it; a run opened with a ``home`` folder also
leaves a run file there while it is open, so the next command in that folder can mark the runs
of a killed process FAILED (``medseg.tracking.stale``, ``medseg.tracking.ownership``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from medseg import shutdown
from medseg.errors import TrackingError
from medseg.tracking.client import activate, find_or_create_experiment, require_run
from medseg.tracking.ownership import ProcessIdentity, forget_run, record_run
from medseg.tracking.store import check_tracking_store, tracking_uri
from medseg.tracking.tags import (
    TAG_RESUMED,
    TAG_STALE,
    TAG_STALE_MARKED,
    flatten_mapping,
    flatten_params,
    now_iso,
    refuse_file_paths,
    standard_tags,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class RunTracker:
    """One MLflow run: params, metrics, artifacts and tags, ended on context exit.

    ``tracking_uri`` is resolved by ``tracking_uri()`` (explicit > env > SQLite default).
    Exiting the ``with`` block on an exception marks the run FAILED, otherwise FINISHED; a run
    that fails while the process stops on SIGTERM/SIGINT is KILLED (``medseg.shutdown``).
    ``run_id`` stays readable after the run ended. Log from one process (rank 0) only.

    ``home`` is the folder the command works in (work dir, run dir, batch OUT): while the run
    is open it holds the run file that lets the next command there mark the run FAILED if
    this process is killed (``mark_stale_runs``). Every run is tagged with its owner process
    (``medseg.tracking.ownership``).

    Example:
        >>> with RunTracker().start(experiment="hippocampus", run_name="fold0", tags={}) as run:
        ...     run.log_params({"optim": {"lr": 1e-3}})
        ...     run.log_metrics({"loss": 0.7}, step=1)
    """

    def __init__(
        self, tracking_uri: str | None = None, *, home: Path | None = None, role: str = "run"
    ) -> None:
        self._explicit_uri = tracking_uri
        self.tracking_uri: str | None = None
        self.run_id: str | None = None  # kept after the run ends, for reports
        self._running = False
        self._attached = False
        self._client: MlflowClient | None = None
        self._home = Path(home) if home is not None else None
        self._role = role

    def start(
        self,
        experiment: str,
        run_name: str,
        tags: Mapping[str, str],
        parent_run_id: str | None = None,
        nested: bool = False,
        *,
        manifest_sha256: str | None = None,
        run_id: str | None = None,
    ) -> RunTracker:
        """Start the run in ``experiment`` (created if missing) with standard + given tags.

        ``parent_run_id`` nests the run under that ACTIVE run (a run of another process, or
        the innermost run of this thread: MLflow refuses any other); ``nested=True`` nests it
        under the run active in this thread. ``run_id`` reopens an existing run instead (a
        resumed training job keeps logging into the run it started): it becomes RUNNING
        again, owned by this process, tagged ``medseg.resumed`` and no longer ``medseg.stale``.
        Returns ``self`` so ``with tracker.start(...)`` works.

        Raises:
            TrackingUnavailableError: the store cannot be reached or written (checked first).
        """
        if self.run_id is not None:
            raise TrackingError(f"this tracker already started run {self.run_id}")
        owner = ProcessIdentity.current().tags()
        all_tags = {**standard_tags(manifest_sha256=manifest_sha256), **tags, **owner}
        all_tags = {key: str(value) for key, value in all_tags.items()}
        refuse_file_paths(all_tags, kind="tag")
        # MLflow records the entry script's absolute path, which may name a person's home.
        all_tags.setdefault("mlflow.source.name", Path(sys.argv[0]).name or "<console>")
        check_tracking_store(tracking_uri(self._explicit_uri))
        self.tracking_uri = activate(self._explicit_uri)
        self._client = MlflowClient(tracking_uri=self.tracking_uri)
        if run_id is not None:
            try:
                self._claim(run_id, owner)
                active = mlflow.start_run(run_id=run_id, nested=nested)
            except MlflowException as error:  # no such run (or it is deleted)
                raise TrackingError(f"run {run_id}: {error.message}") from error
        else:
            active = mlflow.start_run(
                experiment_id=find_or_create_experiment(
                    self._client, self.tracking_uri, experiment
                ),
                run_name=run_name,
                nested=nested or parent_run_id is not None,  # MLflow wants both in one thread
                parent_run_id=parent_run_id,
                tags=all_tags,
            )
        self.run_id = active.info.run_id
        self._running = True
        if self._home is not None:
            record_run(self._home, self.run_id, tracking_uri=self.tracking_uri, role=self._role)
        return self

    def _claim(self, run_id: str, owner: Mapping[str, str]) -> None:
        """Make this process the owner of ``run_id`` before it becomes RUNNING again, so that
        a concurrent ``mark_stale_runs`` never sees it RUNNING under its dead old owner."""
        client = self._require_client(running=False)
        for tag in (TAG_STALE, TAG_STALE_MARKED):
            if tag in client.get_run(run_id).data.tags:
                client.delete_tag(run_id, tag)
        resumed = {**owner, TAG_RESUMED: now_iso()}
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in resumed.items()])

    def attach(self, run_id: str) -> RunTracker:
        """Log into the existing run ``run_id`` without changing its status (``end`` then
        only lets go of it): for reports added to a run another command owns.

        Raises:
            TrackingUnavailableError: the store cannot be reached or written.
            TrackingError: there is no such run.
        """
        self.tracking_uri = require_run(run_id, tracking_uri=self._explicit_uri)
        self._client = MlflowClient(tracking_uri=self.tracking_uri)
        self.run_id, self._running, self._attached = run_id, True, True
        return self

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.end(failed=exc_type is not None)

    def end(self, *, failed: bool = False, killed: bool = False) -> None:
        """End the run as FINISHED, FAILED or KILLED; does nothing if it is not running.

        ``failed`` while the process is stopping on a signal means KILLED: the run did not
        fail, it was stopped.
        """
        if not self._running:
            return
        if self._attached:
            self._running = False
            return
        if killed or (failed and shutdown.requested() is not None):
            status = RunStatus.to_string(RunStatus.KILLED)
        else:
            status = RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED)
        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            mlflow.end_run(status=status)
        else:
            client, run_id = self._require_run()
            client.set_terminated(run_id, status=status)
        self._running = False
        if self._home is not None and self.run_id is not None:
            forget_run(self._home, self.run_id)

    def _require_client(self, *, running: bool = True) -> MlflowClient:
        if self._client is None or (running and not self._running):
            raise TrackingError("this tracker has no running run: call start() first")
        return self._client

    def _require_run(self) -> tuple[MlflowClient, str]:
        """The client and the id of the running run (see ``_require_client``)."""
        client = self._require_client()
        if self.run_id is None:  # pragma: no cover - a running tracker has a run id
            raise TrackingError("this tracker has no running run: call start() first")
        return client, self.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log (nested) params with dotted keys; values too long for MLflow become artifacts.

        A value over MLflow's limit is logged cut, ending in a pointer to the artifact
        ``params/<key>.txt`` that holds it whole. Raises ``TrackingError`` for path-like values.
        """
        client, run_id = self._require_run()
        flat = flatten_params(params)
        refuse_file_paths(flat, kind="param")
        for key, value in flat.items():
            if len(value) > MAX_PARAM_VAL_LENGTH:
                client.log_text(run_id, value, f"params/{key}.txt")
                marker = f"...[truncated; full value in artifact params/{key}.txt]"
                flat[key] = value[: MAX_PARAM_VAL_LENGTH - len(marker)] + marker
        client.log_batch(run_id, params=[Param(k, v) for k, v in flat.items()])

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log (nested, dotted) numeric metrics at ``step`` (epoch or iteration).

        Raises:
            TrackingError: a metric value is not a number.
        """
        client, run_id = self._require_run()
        now_ms = int(time.time() * 1000)
        entries = []
        for key, value in flatten_mapping(metrics).items():
            try:
                entries.append(Metric(key, float(value), now_ms, int(step)))
            except (TypeError, ValueError) as error:
                raise TrackingError(f"metric {key!r} is not a number: {value!r}") from error
        client.log_batch(run_id, metrics=entries)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) run tags; path-like values are refused."""
        client, run_id = self._require_run()
        values = {key: str(value) for key, value in tags.items()}
        refuse_file_paths(values, kind="tag")
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in values.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload one local file (or folder) under the run's ``artifact_path``."""
        client, run_id = self._require_run()
        client.log_artifact(run_id, str(path), artifact_path)

    def log_dict(self, obj: Mapping[str, Any] | list, name: str) -> None:
        """Store ``obj`` as the artifact ``name`` (JSON, or YAML for ``.yaml``/``.yml``)."""
        client, run_id = self._require_run()
        client.log_dict(run_id, obj, name)  # type: ignore[arg-type]  # MLflow writes lists too

    def log_image(self, png_path: str | Path, artifact_path: str = "images") -> None:
        """Upload a PNG file (overlay, curve) under ``artifact_path``; other formats are refused.

        Raises:
            TrackingError: ``png_path`` is not a PNG file.
        """
        png_path = Path(png_path)
        with png_path.open("rb") as handle:
            if handle.read(8) != b"\x89PNG\r\n\x1a\n":
                raise TrackingError(f"{png_path.name}: not a PNG file")
        self.log_artifact(png_path, artifact_path)

    def log_figure(self, figure: Figure, name: str) -> None:
        """Save a matplotlib figure as the artifact ``name`` (e.g. ``"figures/loss.png"``)."""
        client, run_id = self._require_run()
        client.log_figure(run_id, figure, name)
