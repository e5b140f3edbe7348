"""What a batch worker process does: load the model once, then process one scan per call.

``start_worker`` runs once per worker (it is the pool's initializer): it takes on the parent's
environment and working folder (forkserver workers would otherwise keep the server's), limits
torch to its share of the cores and loads the model.

``process_scan`` takes the scan's lock (``medseg.batch.locks``: another batch run on the same
OUT_DIR may be working on it), predicts it with ``medseg.infer.stage.predict_task`` into a
fresh staging folder, adds ``result.json`` and publishes the folder (``medseg.batch.layout``).
It returns a ``ScanResult`` or ``ScanFailure``, or ``ScanElsewhere`` for a scan that another
process holds or has finished, and never raises for a bad scan. A model that
cannot be loaded is not a scan's fault: ``process_scan`` then raises ``ModelLoadError`` and the
runner stops the batch. (The parent does not load the model to check it first: that would
cost seconds of imports per invocation; it reads only the model's input channels from its
package's ``MLmodel``.)
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from medseg.batch import layout, locks
from medseg.batch.records import ScanFailure, ScanResult, model_reference
from medseg.batch.scans import BatchScan
from medseg.errors import ConfigError, MedsegError, ModelLoadError
from medseg.infer.options import PredictionOptions
from medseg.infer.outputs import ScanOutputs
from medseg.infer.predictor import PackagedModel, load_packaged_model, model_cache_folder
from medseg.infer.stage import check_outputs, predict_task, scan_predictors
from medseg.phi import redact_scan


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker needs, sent to it once (picklable)."""

    model_uri: str
    tracking_uri: str | None
    options: PredictionOptions
    scans_root: Path  # absolute
    out_dir: Path  # absolute
    outputs: ScanOutputs  # its output_format a registered format's name
    with_source: bool  # --case-ids folder: paths may be written out
    replace: bool  # --force: replace complete outputs
    threads: int
    environment: dict[str, str]
    working_folder: str

    def reason_for_records(self, reason: str, scan: BatchScan) -> str:
        """A failure reason as it may be written: without the scan's paths and folder names
        unless the user chose ``--case-ids folder``."""
        if self.with_source:
            return reason
        return redact_scan(reason, source=scan.source, files=scan.files, root=self.scans_root)


@dataclass(frozen=True)
class ScanElsewhere:
    """A scan another process is working on (``done`` False) or has finished (``done`` True)."""

    case_id: str
    done: bool


# What a forkserver imports once for all workers: the worker, mlflow's model loading and
# medseg's own network factories (the import of a packaged model's factory is the slowest part).
PRELOAD_MODULES = ["medseg.batch.worker", "medseg.tracking.packaging", "medseg.models"]


@dataclass
class _Worker:
    settings: WorkerSettings
    model: PackagedModel | None
    predictors: list[torch.nn.Module] | None
    load_error: str = ""


_worker: _Worker | None = None


def start_worker(settings: WorkerSettings) -> None:
    """Pool initializer: the parent's environment, the thread budget, the model."""
    global _worker
    os.environ.clear()
    os.environ.update(settings.environment)
    os.chdir(settings.working_folder)
    torch.set_num_threads(settings.threads)
    try:
        model = load_packaged_model(settings.model_uri, tracking_uri=settings.tracking_uri)
        model = model.for_prediction(fast=settings.options.fast)
        _check_choices(settings, model)
        predictors = scan_predictors(
            model, settings.options, cache_dir=model_cache_folder(settings.out_dir)
        )
    except Exception as error:  # reported by process_scan: an initializer must not raise
        reason = f"{settings.model_uri}: cannot load the model: {type(error).__name__}: {error}"
        _worker = _Worker(
            settings,
            None,
            None,
            load_error=str(error) if isinstance(error, MedsegError) else reason,
        )
        return
    _worker = _Worker(settings, model, predictors)


def _check_choices(settings: WorkerSettings, model: PackagedModel) -> None:
    """Refuse ``keep_largest`` values or ``structures`` the model has no structure for, and
    outputs it cannot make (``check_outputs``): no scan can be done."""
    try:
        settings.options.kept_structures(model.label_names)
    except ConfigError as error:
        raise ConfigError(f"{settings.model_uri}: keep_largest: {error}") from error
    try:
        settings.options.selected_structures(model.label_names)
    except ConfigError as error:
        raise ConfigError(f"{settings.model_uri}: structures: {error}") from error
    check_outputs(model, settings.options, settings.outputs)


def process_scan(
    scan: BatchScan, *, wait_if_busy: bool = False
) -> ScanResult | ScanFailure | ScanElsewhere:
    """Predict ``scan`` and publish its output folder; a failure is returned, not raised.

    A scan locked by another process is left to it (``ScanElsewhere``), or with
    ``wait_if_busy`` waited for: then done here only if that process did not finish it.

    Raises:
        ModelLoadError: the worker could not load the model (no scan can be done).
        RuntimeError: called outside a worker started by ``start_worker`` (a bug).
    """
    if _worker is None:
        raise RuntimeError("process_scan runs in a worker started by start_worker")
    settings, out_dir = _worker.settings, _worker.settings.out_dir
    if _worker.model is None:
        raise ModelLoadError(_worker.load_error)
    with locks.case_lock(out_dir, scan.case_id, wait=wait_if_busy) as held:
        if not held:
            return ScanElsewhere(scan.case_id, done=False)
        # complete now, though not when the run began (or, with --force, while we waited):
        # another process did it meanwhile
        if layout.is_complete(out_dir, scan.case_id) and (wait_if_busy or not settings.replace):
            return ScanElsewhere(scan.case_id, done=True)
        return _predict_and_publish(scan, _worker, _worker.model)


def _predict_and_publish(
    scan: BatchScan, worker: _Worker, model: PackagedModel
) -> ScanResult | ScanFailure:
    """Predict ``scan`` into a staging folder and publish it (the caller holds its lock)."""
    settings, out_dir = worker.settings, worker.settings.out_dir
    layout.remove_staging_leftovers(out_dir, scan.case_id)
    staging = layout.new_staging_folder(out_dir, scan.case_id)
    try:
        outcome = predict_task(
            scan.task(),
            model,
            options=settings.options,
            predictors=worker.predictors,
            out_dir=staging,
            outputs=settings.outputs,
        )
        source = scan.source if settings.with_source else None
        selected = settings.options.selected_structures(model.label_names)
        written = selected or model.label_names
        if not outcome.ok:
            return ScanFailure(
                case_id=scan.case_id,
                reason=settings.reason_for_records(outcome.reason, scan),
                error_type=outcome.error_type,
                seconds=round(outcome.seconds, 3),
                source=source,
            )
        result = ScanResult(
            case_id=scan.case_id,
            seconds=round(outcome.seconds, 3),
            outputs=outcome.outputs,
            structures=[name for value, name in sorted(written.items()) if value],
            structures_selected=list(selected.values()) if selected else None,
            fast=settings.options.fast or None,
            volumes_ml=outcome.volumes_ml,
            confidence=outcome.confidence or None,
            model=settings.model_uri,
            ensemble_members=len(model.members) if len(model.members) > 1 else None,
            source=source,
            corrections=outcome.corrections or None,
            non_finite_replaced=outcome.non_finite_replaced,
            **model_reference(settings.model_uri),
        )
        layout.write_result(staging, result)
        layout.publish(staging, out_dir, scan.case_id, replace=settings.replace)
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when published
