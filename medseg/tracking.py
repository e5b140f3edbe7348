"""Experiment tracking, model packaging and the model registry: the only module that imports mlflow.

Where runs go (``tracking_uri``): an explicit URI, else ``MLFLOW_TRACKING_URI``, else an
embedded SQLite store ``<base>/mlruns/mlflow.db`` with artifacts in ``<base>/mlruns/artifacts``,
where ``<base>`` is ``$MEDSEG_HOME`` or, when that is unset, the current working directory.
Experiments created here in a SQLite store get ``<db folder>/artifacts/<experiment>`` as their
artifact location, because MLflow's own default (``./mlruns`` relative to whatever the working
directory happens to be) separates artifacts from their database as soon as the cwd changes.
Teams point ``MLFLOW_TRACKING_URI`` at a shared ``mlflow server`` instead.

Every entry point checks the store before it talks to it (``medseg.tracking_store``: seconds,
where MLflow's own retries take minutes). Every run is tagged with the process that owns it;
a run opened with a ``home`` folder also leaves a run file there while it is open, so the
next command in that folder can mark the runs of a killed process FAILED
(``mark_stale_runs``; ``medseg.run_ownership``).

Nothing here logs file system paths: parameter and tag values that look like absolute paths
are refused (``TrackingError``), so callers log hashes (``medseg.phi.hash_identifier``) and
manifest digests instead, and the ``mlflow.source.name`` tag keeps only the script's name.

A trained model is packaged as a custom ``mlflow.pyfunc`` model (weights + plan + label map +
how to rebuild the network), not the ``pt2`` format, which freezes the spatial shape that
sliding-window inference needs to vary. Registry rule: see ``register_and_promote``.

Every entry point (``RunTracker``, ``load_segmentation_model``, ``register_and_promote``) takes
an optional ``tracking_uri`` resolved by ``tracking_uri()``; pass the same one to all of them.
MLflow's fluent API is process-wide, so each entry point also points it at that URI (model
logging needs the fluent active run) without leaving it in ``MLFLOW_TRACKING_URI``.

One module of about 550 lines on purpose: it is the project's single mlflow boundary. Split it
into ``tracking/{runs,packaging,registry}.py`` when it grows further.
"""

from __future__ import annotations

import enum
import importlib
import json
import logging
import math
import pickle
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from os import environ
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote

import mlflow
import numpy as np
import torch
import yaml
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import (
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from medseg import __version__, shutdown
from medseg.errors import MedsegError
from medseg.run_ownership import (
    ProcessIdentity,
    forget_run,
    record_run,
    recorded_runs,
)
from medseg.tracking_store import (
    check_tracking_store,
    require_store_for_model,
    require_tracking_store,
    tracking_uri,
)

logger = logging.getLogger(__name__)

TAG_MEDSEG_VERSION = "medseg.version"
TAG_GIT_COMMIT = "git.commit"
TAG_MANIFEST_SHA256 = "manifest.sha256"
TAG_STALE = "medseg.stale"
TAG_STALE_MARKED = "medseg.stale.marked"
TAG_RESUMED = "medseg.resumed"
STALE_REASON = "process gone; marked by the next run"
MODEL_NAME_IN_RUN = "model"
_ABSOLUTE_PATH = re.compile(r"^(?:/[^/\s]|~[/\\]|[A-Za-z]:[\\/]|\\\\|file:)")


class TrackingError(MedsegError):
    """A run, model package or registry operation cannot be done as asked."""


class Alias(enum.StrEnum):
    """Registry aliases that ``register_and_promote`` maintains."""

    CANDIDATE = "candidate"
    CHAMPION = "champion"


_resolve = tracking_uri  # for functions whose ``tracking_uri`` parameter hides the function


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


def git_commit() -> str:
    """``git rev-parse HEAD`` of the checkout medseg runs from, or ``"unknown"``."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def standard_tags(*, manifest_sha256: str | None = None) -> dict[str, str]:
    """Tags every medseg run carries: package version, git commit and the data manifest digest."""
    tags = {TAG_MEDSEG_VERSION: __version__, TAG_GIT_COMMIT: git_commit()}
    if manifest_sha256 is not None:
        tags[TAG_MANIFEST_SHA256] = manifest_sha256
    return tags


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings into dotted keys with string values (lists become JSON).

    Example:
        >>> flatten_params({"optim": {"lr": 0.01, "betas": [0.9, 0.99]}})
        {'optim.lr': '0.01', 'optim.betas': '[0.9, 0.99]'}
    """
    return {
        key: json.dumps(value, default=str) if isinstance(value, list | tuple) else str(value)
        for key, value in _flatten(params, prefix).items()
    }


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix=f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def refuse_file_paths(values: Mapping[str, str], *, kind: str) -> None:
    """Raise ``TrackingError`` if a value looks like an absolute path (they can identify people)."""
    for key, value in values.items():
        if _ABSOLUTE_PATH.match(str(value)):
            raise TrackingError(
                f"{kind} {key!r} looks like an absolute file system path; log a hash of it "
                "(medseg.phi.hash_identifier) instead of the path"
            )


def _activate(explicit: str | None) -> str:
    """Resolve ``tracking_uri(explicit)``, point mlflow's process-wide client at it, return it."""
    uri = tracking_uri(explicit)
    if (db := _sqlite_path(uri)) is not None:
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


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return None
    return Path(unquote(uri[len("sqlite:///") :])).resolve()


def _experiment_id(client: MlflowClient, uri: str, name: str) -> str:
    """Id of the experiment ``name``, created with a sane artifact location if it is new."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if (db := _sqlite_path(uri)) is not None:
            folder = re.sub(r"[^A-Za-z0-9._-]", "_", name)
            location = (db.parent / "artifacts" / folder).as_uri()
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException as error:  # another process created it first
            if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(f"experiment {name!r} is deleted; restore it or use another name")
    return experiment.experiment_id


class RunTracker:
    """One MLflow run: params, metrics, artifacts and tags, ended on context exit.

    ``tracking_uri`` is resolved by ``tracking_uri()`` (explicit > env > SQLite default).
    Exiting the ``with`` block on an exception marks the run FAILED, otherwise FINISHED; a run
    that fails while the process stops on SIGTERM/SIGINT is KILLED (``medseg.shutdown``).
    ``run_id`` stays readable after the run ended. Log from one process (rank 0) only.

    ``home`` is the folder the command works in (work dir, run dir, batch OUT): while the run
    is open it holds the run file that lets the next command there mark the run FAILED if
    this process is killed (``mark_stale_runs``). Every run is tagged with its owner process
    (``medseg.run_ownership``).

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
        self.tracking_uri = _activate(self._explicit_uri)
        self._client = MlflowClient(tracking_uri=self.tracking_uri)
        if run_id is not None:
            try:
                self._claim(run_id, owner)
                active = mlflow.start_run(run_id=run_id, nested=nested)
            except MlflowException as error:  # no such run (or it is deleted)
                raise TrackingError(f"run {run_id}: {error.message}") from error
        else:
            active = mlflow.start_run(
                experiment_id=_experiment_id(self._client, self.tracking_uri, experiment),
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
        resumed = {**owner, TAG_RESUMED: _now_iso()}
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
            self._require_client().set_terminated(self.run_id, status=status)
        self._running = False
        if self._home is not None:
            forget_run(self._home, self.run_id)

    def _require_client(self, *, running: bool = True) -> MlflowClient:
        if self._client is None or (running and not self._running):
            raise TrackingError("this tracker has no running run: call start() first")
        return self._client

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log (nested) params with dotted keys; values too long for MLflow become artifacts.

        A value over MLflow's limit is logged cut, ending in a pointer to the artifact
        ``params/<key>.txt`` that holds it whole. Raises ``TrackingError`` for path-like values.
        """
        client = self._require_client()
        flat = flatten_params(params)
        refuse_file_paths(flat, kind="param")
        for key, value in flat.items():
            if len(value) > MAX_PARAM_VAL_LENGTH:
                client.log_text(self.run_id, value, f"params/{key}.txt")
                marker = f"...[truncated; full value in artifact params/{key}.txt]"
                flat[key] = value[: MAX_PARAM_VAL_LENGTH - len(marker)] + marker
        client.log_batch(self.run_id, params=[Param(k, v) for k, v in flat.items()])

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log (nested, dotted) numeric metrics at ``step`` (epoch or iteration)."""
        client = self._require_client()
        now_ms = int(time.time() * 1000)
        entries = []
        for key, value in _flatten(metrics).items():
            try:
                entries.append(Metric(key, float(value), now_ms, int(step)))
            except (TypeError, ValueError) as error:
                raise TrackingError(f"metric {key!r} is not a number: {value!r}") from error
        client.log_batch(self.run_id, metrics=entries)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) run tags; path-like values are refused."""
        client = self._require_client()
        values = {key: str(value) for key, value in tags.items()}
        refuse_file_paths(values, kind="tag")
        client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in values.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload one local file (or folder) under the run's ``artifact_path``."""
        self._require_client().log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, obj: Mapping[str, Any] | list, name: str) -> None:
        """Store ``obj`` as the artifact ``name`` (JSON, or YAML for ``.yaml``/``.yml``)."""
        self._require_client().log_dict(self.run_id, obj, name)

    def log_image(self, png_path: str | Path, artifact_path: str = "images") -> None:
        """Upload a PNG file (overlay, curve) under ``artifact_path``; other formats are refused."""
        png_path = Path(png_path)
        with png_path.open("rb") as handle:
            if handle.read(8) != b"\x89PNG\r\n\x1a\n":
                raise TrackingError(f"{png_path.name}: not a PNG file")
        self.log_artifact(png_path, artifact_path)

    def log_figure(self, figure: Any, name: str) -> None:
        """Save a matplotlib figure as the artifact ``name`` (e.g. ``"figures/loss.png"``)."""
        self._require_client().log_figure(self.run_id, figure, name)


# --- runs left RUNNING by a killed process ----------------------------------------------------


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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
    uri = _resolve(tracking_uri)
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
        run_id, tags=[RunTag(TAG_STALE, STALE_REASON), RunTag(TAG_STALE_MARKED, _now_iso())]
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


# --- model packaging -------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    """A packaged segmentation model: network in eval mode plus the metadata it travels with."""

    network: torch.nn.Module
    plan: dict[str, Any]
    labels: dict[int, str]
    model_info: dict[str, Any]


def build_network(factory: str, factory_kwargs: Mapping[str, Any]) -> torch.nn.Module:
    """Call the factory ``"package.module:function"`` with ``factory_kwargs``."""
    module_name, _, attribute = factory.partition(":")
    if not module_name or not attribute:
        raise TrackingError(f"network factory {factory!r} is not of the form 'module:function'")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as error:
        raise TrackingError(f"network factory {factory!r} cannot be imported: {error}") from error
    network = target(**factory_kwargs)
    if not isinstance(network, torch.nn.Module):
        raise TrackingError(f"network factory {factory!r} returned {type(network).__name__}")
    return network


def _softmax_probabilities(network: torch.nn.Module, array: np.ndarray) -> np.ndarray:
    first_parameter = next(network.parameters(), None)
    device = first_parameter.device if first_parameter is not None else torch.device("cpu")
    batch = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)
    with torch.inference_mode():
        logits = network(batch)
        if isinstance(logits, list | tuple):  # deep supervision: full resolution comes first
            logits = logits[0]
        return torch.softmax(logits.float(), dim=1).cpu().numpy()


class SegmentationPyfuncModel(PythonModel):
    """MLflow pyfunc wrapper: preprocessed (B, C, *spatial) float32 -> softmax (B, K, *spatial).

    Artifacts: ``weights`` (state_dict), ``plan`` (preprocessing plan), ``model`` (factory and
    kwargs that rebuild the network; the factory's package must be importable where the model
    is loaded), ``labels`` (channel index -> structure name).
    """

    def load_context(self, context: PythonModelContext) -> None:
        """Rebuild the network from its factory, load its weights, read plan and labels."""
        paths = context.artifacts
        self.model_info = json.loads(Path(paths["model"]).read_text(encoding="utf-8"))
        self.plan = json.loads(Path(paths["plan"]).read_text(encoding="utf-8"))
        labels = json.loads(Path(paths["labels"]).read_text(encoding="utf-8"))
        self.labels = {int(index): name for index, name in labels.items()}
        network = build_network(self.model_info["factory"], self.model_info["factory_kwargs"])
        state = torch.load(paths["weights"], map_location="cpu", weights_only=True)
        network.load_state_dict(state)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.network = network.to(device).eval()

    def predict(
        self,
        context: PythonModelContext,
        model_input: np.ndarray,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        """Softmax probabilities, float32, same batch and spatial shape as ``model_input``."""
        array = np.asarray(model_input)
        if array.ndim < 3:
            raise TrackingError(f"model input must be (B, C, *spatial), got shape {array.shape}")
        return _softmax_probabilities(self.network, array)

    def unwrap(self) -> LoadedModel:
        """The torch network and metadata, for sliding-window inference outside pyfunc."""
        return LoadedModel(self.network, self.plan, self.labels, self.model_info)


_MODEL_CODE = """from mlflow.models import set_model

from medseg.tracking import SegmentationPyfuncModel

set_model(SegmentationPyfuncModel())
"""


def _bare_network(network: torch.nn.Module) -> torch.nn.Module:
    """The module under DistributedDataParallel/DataParallel and ``torch.compile`` wrappers."""
    for attribute in ("module", "_orig_mod"):
        inner = getattr(network, attribute, None)
        if isinstance(inner, torch.nn.Module):
            network = inner
    return network


def _evaluate_example(network: torch.nn.Module, input_example: np.ndarray) -> np.ndarray:
    was_training = network.training
    network.eval()
    try:
        return _softmax_probabilities(network, input_example)
    finally:
        network.train(was_training)


def log_segmentation_model(
    network: torch.nn.Module,
    *,
    factory: str,
    factory_kwargs: Mapping[str, Any],
    plan: Mapping[str, Any],
    labels: Mapping[int, str],
    input_example: np.ndarray,
    registered_model_name: str | None = None,
) -> ModelInfo:
    """Log ``network`` as the pyfunc model ``model`` of the active run; register it if named.

    Before logging, the network is rebuilt from ``factory`` and loaded with the weights, so a
    package that could not be loaded later fails now. The signature has variable batch and
    spatial dims; ``input_example`` only fixes channels and dtype and is not stored. Pip
    requirements are pinned from the running versions so nothing is resolved or downloaded.

    Returns:
        MLflow's ``ModelInfo``; ``registered_model_version`` is set when a name was given.

    Raises:
        TrackingError: no active run, factory/weights mismatch, or labels not 0..K-1.
    """
    if mlflow.active_run() is None:
        raise TrackingError("no active MLflow run: start one with RunTracker.start()")
    network = _bare_network(network)
    state = {
        key: value.detach().cpu() if isinstance(value, torch.Tensor) else value
        for key, value in network.state_dict().items()
    }
    try:
        build_network(factory, factory_kwargs).load_state_dict(state)
    except RuntimeError as error:
        raise TrackingError(f"factory {factory!r} builds a different network: {error}") from error
    probabilities = _evaluate_example(network, input_example)
    n_channels = probabilities.shape[1]
    if sorted(labels) != list(range(n_channels)):
        raise TrackingError(f"labels {sorted(labels)} must be the channels 0..{n_channels - 1}")
    spatial = (-1,) * (probabilities.ndim - 2)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, input_example.shape[1], *spatial))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_channels, *spatial))]),
    )
    model_info = {
        "factory": factory,
        "factory_kwargs": dict(factory_kwargs),
        "network_class": type(network).__qualname__,
        "medseg_version": __version__,
        "output": "softmax probabilities (B, K, *spatial)",
    }
    with tempfile.TemporaryDirectory(prefix="medseg-model-") as folder:
        artifacts = {
            "weights": Path(folder) / "weights.pt",
            "plan": Path(folder) / "plan.json",
            "model": Path(folder) / "model.json",
            "labels": Path(folder) / "labels.json",
        }
        torch.save(state, artifacts["weights"])
        # Models from code: the model file is a reference to this class, not a pickle.
        code = Path(folder) / "segmentation_model.py"
        code.write_text(_MODEL_CODE, encoding="utf-8")
        try:
            for key, payload in (
                ("plan", dict(plan)),
                ("model", model_info),
                ("labels", {str(index): name for index, name in labels.items()}),
            ):
                artifacts[key].write_text(json.dumps(payload, indent=2), encoding="utf-8")
        except TypeError as error:
            raise TrackingError(f"{key}.json: not JSON-serializable: {error}") from error
        with warnings.catch_warnings():
            # The example is left out on purpose: stored as JSON, a volume would be huge.
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            return mlflow.pyfunc.log_model(
                name=MODEL_NAME_IN_RUN,
                python_model=str(code),
                artifacts={key: str(path) for key, path in artifacts.items()},
                signature=signature,
                pip_requirements=[
                    f"mlflow=={mlflow.__version__}",
                    f"torch=={torch.__version__.split('+')[0]}",
                    f"numpy=={np.__version__}",
                ],
                registered_model_name=registered_model_name,
                metadata={"medseg_version": __version__},
            )


# What loading a missing, incomplete or corrupt model package raises (MLmodel YAML, JSON
# files, weights, factory); anything else is a bug and keeps its traceback.
_UNLOADABLE_MODEL = (
    MlflowException,
    OSError,
    ValueError,
    KeyError,
    RuntimeError,
    pickle.UnpicklingError,
    yaml.YAMLError,
)


def load_segmentation_model(model_uri: str, *, tracking_uri: str | None = None) -> LoadedModel:
    """Load a packaged model (``models:/NAME@champion``, ``runs:/ID/model``) as torch + metadata.

    The network is in eval mode, on CUDA when available, else CPU.

    Raises:
        TrackingUnavailableError: a registry or run URI and a store that cannot be reached.
        TrackingError: no such model, or its package is incomplete or corrupt (names the URI).
    """
    require_store_for_model(model_uri, tracking_uri)
    _activate(tracking_uri)
    try:
        python_model = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    except _UNLOADABLE_MODEL as error:
        problem = (
            error.message
            if isinstance(error, MlflowException)
            else f"{type(error).__name__}: {' '.join(str(error).split())}"
        )
        raise TrackingError(f"{model_uri}: cannot load the model: {problem}") from error
    if not isinstance(python_model, SegmentationPyfuncModel):
        raise TrackingError(f"{model_uri}: not a medseg segmentation model")
    return python_model.unwrap()


# --- registry ----------------------------------------------------------------------------------


_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")


def pin_model_uri(model_uri: str, *, tracking_uri: str | None = None) -> str:
    """``models:/NAME@ALIAS`` as the version the alias points at now (``models:/NAME/7``);
    any other URI unchanged. Jobs pin once so every worker and scan uses one model even if
    the alias moves meanwhile.

    Raises:
        TrackingUnavailableError: a registry or run URI and a store that cannot be reached.
        TrackingError: the registered model or the alias does not exist.
    """
    require_store_for_model(model_uri, tracking_uri)
    match = _ALIAS_URI.match(model_uri)
    if match is None:
        return model_uri
    client = MlflowClient(tracking_uri=_activate(tracking_uri))
    try:
        version = client.get_model_version_by_alias(match["name"], match["alias"])
    except MlflowException as error:
        raise TrackingError(f"{model_uri}: {error.message}") from error
    return f"models:/{match['name']}/{version.version}"


def register_run_model(run_id: str, *, name: str, tracking_uri: str | None = None) -> str:
    """Register the packaged model of run ``run_id`` under ``name``; return the new version.

    Raises:
        TrackingError: the run has no packaged medseg model.
    """
    client = MlflowClient(tracking_uri=_activate(tracking_uri))
    try:
        run = client.get_run(run_id)
        models = client.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME_IN_RUN}'",
        )
        if not models:
            raise TrackingError(f"run {run_id}: no packaged {MODEL_NAME_IN_RUN!r} to register")
        version = mlflow.register_model(f"models:/{models[0].model_id}", name)
    except MlflowException as error:
        raise TrackingError(f"run {run_id}: cannot register its model: {error.message}") from error
    return str(version.version)


@dataclass(frozen=True)
class PromotionResult:
    """Outcome of ``register_and_promote`` for one model version."""

    name: str
    version: str
    metric: float
    promoted: bool
    champion_version: str
    previous_champion_version: str | None
    previous_champion_metric: float | None


def register_and_promote(
    model_version: str | int,
    *,
    name: str,
    metric: float,
    metric_name: str = "val_mean_dice",
    tracking_uri: str | None = None,
) -> PromotionResult:
    """Tag a registered version with its metric, make it ``candidate``, maybe ``champion``.

    Rule: every version passed here gets the alias ``candidate`` (so it names the latest one).
    ``champion`` moves to it only if there is no champion yet or if ``metric`` is strictly
    greater than the champion's metric, read from the champion's version tag ``metric_name``.
    A champion without that tag (set by hand) is kept, with a warning. Ties keep the old
    champion. The read-then-move is not atomic: run promotions of one model one at a time.

    Example:
        metrics 0.5, 0.4, 0.6, 0.6 for versions 1-4 leave ``champion`` at 1, 1, 3, 3 and
        ``candidate`` at 1, 2, 3, 4.

    Raises:
        TrackingError: ``metric`` is NaN or infinite.
    """
    metric = float(metric)
    if not math.isfinite(metric):
        raise TrackingError(f"{name} version {model_version}: {metric_name} is {metric}")
    client = MlflowClient(tracking_uri=_activate(tracking_uri))
    version = str(model_version)
    client.set_model_version_tag(name, version, metric_name, repr(metric))
    client.set_model_version_tag(name, version, TAG_MEDSEG_VERSION, __version__)
    client.set_registered_model_alias(name, Alias.CANDIDATE, version)
    # A missing alias is an INVALID_PARAMETER_VALUE error over REST, so read the alias map.
    previous_version = client.get_registered_model(name).aliases.get(Alias.CHAMPION)
    champion = client.get_model_version(name, previous_version) if previous_version else None
    previous_metric = None
    if champion is not None and metric_name in champion.tags:
        previous_metric = float(champion.tags[metric_name])
    if champion is None:
        promoted = True
    elif previous_version == version:
        promoted = False
    elif previous_metric is None:
        logger.warning("%s champion v%s has no %s tag; kept", name, previous_version, metric_name)
        promoted = False
    else:
        promoted = metric > previous_metric
    if promoted:
        client.set_registered_model_alias(name, Alias.CHAMPION, version)
    return PromotionResult(
        name=name,
        version=version,
        metric=metric,
        promoted=promoted,
        champion_version=version if promoted else str(previous_version),
        previous_champion_version=previous_version,
        previous_champion_metric=previous_metric,
    )
