"""``run_batch``: every scan of this shard under SCANS_ROOT through a packaged model.

1. Discover the scans (``medseg.batch.scans``: with a model of several input channels, the
   nnU-Net channel files of a case are one scan) and keep this shard's
   (``medseg.batch.sharding``).
2. Record the shard's corrupt files as failures; skip scans whose output is complete.
3. Process the rest in ``workers`` processes (``medseg.batch.executor``: a worker that dies
   costs only the scan that killed it), each loading the model once and publishing its scans
   atomically (``medseg.batch.worker``). A model that does not load stops the batch with
   ``ModelLoadError`` before any scan is recorded.
4. Rebuild ``summary.csv`` and ``failures.jsonl`` (``medseg.batch.summary``) and log the run to
   MLflow (``medseg.batch.mlflow_run``; never fatal).

Resuming is the default: run the same command again after a kill and only the scans without a
complete output are processed; ``force`` redoes complete ones too. A complete scan is one
with ``result.json``, whatever the format of its label map. A changed model or prediction
option is not detected: use ``force`` or a new OUT_DIR when they change. A changed
``output_format`` is warned about (complete scans keep their label map); ``force`` then
replaces each scan's folder as a whole, so a scan never has label maps in two formats.

Several runs may share one OUT_DIR (a restarted job while the old one still runs, overlapping
shards): each scan is locked by the process working on it (``medseg.batch.locks``). A run
leaves a locked scan to its holder and, once its other scans are done, waits for it; the scan
then counts as done elsewhere, or is done here if the holder died or failed it.

On SIGTERM/SIGINT (``ShutdownRequested``) the workers are killed at once, the scans they were
writing are discarded (their staging folders removed), the summary files are rebuilt from what
is complete, the run is logged to MLflow as KILLED, and the exception goes on to the CLI.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from medseg.batch import layout
from medseg.batch.executor import run_isolated
from medseg.batch.mlflow_run import (
    DEFAULT_EXPERIMENT,
    TrackingOutcome,
    log_batch_run,
    loggable_model_uri,
)
from medseg.batch.records import ScanFailure, ScanResult
from medseg.batch.scans import BatchScan, Inventory, take_inventory
from medseg.batch.sharding import Shard
from medseg.batch.summary import SummaryFiles, write_summary
from medseg.batch.worker import (
    PRELOAD_MODULES,
    ScanElsewhere,
    WorkerSettings,
    process_scan,
    start_worker,
)
from medseg.errors import InputFileError, ModelLoadError, WorkerDiedError
from medseg.infer.auto import resolve_options
from medseg.infer.options import PredictionOptions
from medseg.infer.outputs import ScanOutputs
from medseg.ingest.case_ids import CaseIdScheme
from medseg.io.atomic import write_json_atomic
from medseg.io.dicom.pixels import default_workers
from medseg.io.formats import format_named
from medseg.progress import ProgressCallback
from medseg.shutdown import ShutdownRequested

logger = logging.getLogger(__name__)

DISCOVERY_JSON = "discovery.json"  # what the scans tree holds besides scans (every shard)


@dataclass
class BatchReport:
    """What one ``run_batch`` call did in its shard."""

    out_dir: Path
    shard: Shard
    scans_found: int = 0  # scans and corrupt files in the whole tree (every shard)
    scans_in_shard: int = 0
    done: list[ScanResult] = field(default_factory=list)  # processed by this call
    skipped: list[str] = field(default_factory=list)  # case ids complete before this call
    elsewhere: list[str] = field(default_factory=list)  # completed meanwhile by another run
    failed: list[ScanFailure] = field(default_factory=list)
    ignored_files: int = 0  # files that are not scans (reports, localizers, text...)
    unreadable: int = 0  # files and folders that cannot be read or are corrupt (all shards)
    links_not_followed: int = 0  # symbolic links to folders searched already
    seconds_total: float = 0.0
    summary: SummaryFiles | None = None
    tracking: TrackingOutcome = field(default_factory=TrackingOutcome)

    @property
    def ensemble_members(self) -> int | None:
        """Networks of the ensemble model the scans done now were predicted with (None: one
        network, or no scan done now)."""
        return max((r.ensemble_members or 0 for r in self.done), default=0) or None

    @property
    def exit_code(self) -> int:
        """0 when every scan of the shard is done (now or before), 1 when any failed."""
        return 1 if self.failed else 0


@dataclass(frozen=True)
class BatchSettings:
    """How ``run_batch`` processes its shard (the options of ``medseg batch``)."""

    workers: int = 1  # processes, each loading the model
    shard: Shard = field(default_factory=Shard)
    options: PredictionOptions = field(default_factory=PredictionOptions)
    case_ids: CaseIdScheme = CaseIdScheme.HASH
    outputs: ScanOutputs = field(default_factory=ScanOutputs)  # label map format, SEG, meshes
    force: bool = False  # redo scans whose outputs are complete
    tracking_uri: str | None = None  # models:/ URIs and the batch run
    experiment: str = DEFAULT_EXPERIMENT


def run_batch(
    scans_root: Path,
    model_uri: str,
    out_dir: Path,
    *,
    settings: BatchSettings | None = None,
    parent_run_id: str | None = None,
    on_progress: ProgressCallback | None = None,
) -> BatchReport:
    """Process this shard's scans under ``scans_root`` into ``out_dir`` (see the module doc).

    ``parent_run_id`` nests the batch's MLflow run under that run (a pipeline's).

    Raises:
        UnknownFormatError: ``settings.outputs.output_format`` is not a registered format.
        InputFileError: ``scans_root`` does not exist.
        ModelLoadError: the model cannot be loaded, or ``keep_largest`` names a structure it
            lacks (no scan is recorded as failed for it).
        TrackingUnavailableError: a registry or run model URI and an unreachable store.
        PrecisionRefusedError: bf16 asked for a model whose stored agreement with fp32 is
            below 99.9% or missing (``medseg.infer.auto``).
    """
    started = time.perf_counter()
    settings = settings or BatchSettings()
    workers, shard, options = settings.workers, settings.shard, settings.options
    case_ids, force = CaseIdScheme(settings.case_ids), settings.force
    tracking_uri, experiment = settings.tracking_uri, settings.experiment
    output_format = format_named(settings.outputs.output_format).name
    outputs = replace(settings.outputs, output_format=output_format)
    requested_model = model_uri
    model_uri = pinned_model_uri(model_uri, tracking_uri)
    # the stored agreement is the whole package's; --fast runs only some of its members
    agreement = {} if options.fast else model_agreement(model_uri, tracking_uri)
    options = resolve_options(options, agreement=agreement, model=model_uri)
    scans_root = Path(scans_root).expanduser().resolve()
    if not scans_root.exists():
        raise InputFileError(scans_root, "no such file or folder")
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Scans pulled from a PACS live inside OUT (OUT/.pacs/incoming): only then is OUT searched.
    inside_out = scans_root != out_dir and scans_root.is_relative_to(out_dir)
    inventory = take_inventory(
        scans_root,
        case_ids=case_ids,
        exclude=None if inside_out else out_dir,
        on_progress=on_progress,
        channels=model_channels(model_uri, tracking_uri),
    )
    mine = [scan for scan in inventory.scans if shard.owns(scan.key)]
    report = BatchReport(
        out_dir,
        shard,
        scans_found=len(inventory.scans) + len(inventory.unreadable),
        ignored_files=inventory.ignored_files,
        unreadable=len(inventory.unreadable),
        links_not_followed=inventory.links_not_followed,
    )
    write_json_atomic(out_dir / DISCOVERY_JSON, inventory.report)
    unreadable = _record_unreadable(inventory, shard, out_dir)
    report.failed += unreadable
    report.scans_in_shard = len(mine) + len(unreadable)
    todo: list[BatchScan] = []
    for scan in mine:
        if not force and layout.is_complete(out_dir, scan.case_id):
            report.skipped.append(scan.case_id)
        else:
            todo.append(scan)
    _warn_other_formats(out_dir, report.skipped, output_format)
    run_log = _RunLog(
        params={
            "model_uri": loggable_model_uri(model_uri),
            "model_uri_requested": loggable_model_uri(requested_model),
            "shard": str(shard),
            "workers": workers,
            "case_ids": case_ids.value,
            "dicom_seg": outputs.dicom_seg,
            "output_format": output_format,
            "meshes": outputs.meshes,
            "rtstruct": outputs.rtstruct,
            "radiomics": outputs.radiomics,
            "force": force,
            **options.model_dump(),
        },
        case_ids=case_ids,
        experiment=experiment,
        tracking_uri=tracking_uri,
        parent_run_id=parent_run_id,
        home=out_dir,
    )
    try:
        if todo:
            pool_size = max(1, min(workers, len(todo)))
            worker_settings = WorkerSettings(
                model_uri=model_uri,
                tracking_uri=tracking_uri,
                options=options,
                scans_root=scans_root,
                out_dir=out_dir,
                outputs=outputs,
                with_source=case_ids is CaseIdScheme.FOLDER,
                replace=force,
                threads=max(1, default_workers() // pool_size),
                environment=dict(os.environ),
                working_folder=os.getcwd(),
            )
            _process(todo, worker_settings, pool_size, report, on_progress)
    except ShutdownRequested:
        layout.remove_abandoned_staging(out_dir)
        _add_published(report, todo)
        run_log.record(report, started, killed=True)
        raise
    run_log.record(report, started)
    return report


def _warn_other_formats(out_dir: Path, skipped: list[str], output_format: str) -> None:
    """Say so when complete scans, which are kept, have their label map in another format."""
    other = [
        case_id for case_id in skipped if not layout.has_label_map(out_dir, case_id, output_format)
    ]
    if other:
        logger.warning(
            "%d complete scans (e.g. %s) have their label map in another format than %s and "
            "are kept as they are; --force redoes them",
            len(other),
            other[0],
            output_format,
        )


@dataclass(frozen=True)
class _RunLog:
    """How a batch call is logged to MLflow once its scans are done (or it is stopped)."""

    params: dict
    case_ids: CaseIdScheme
    experiment: str
    tracking_uri: str | None
    parent_run_id: str | None
    home: Path

    def record(self, report: BatchReport, started: float, *, killed: bool = False) -> None:
        """Rebuild the summary files and log the run: FINISHED, or KILLED when stopped."""
        report.summary = write_summary(report.out_dir)
        report.seconds_total = time.perf_counter() - started
        hashed = self.case_ids is CaseIdScheme.HASH
        report.tracking = log_batch_run(
            params=self.params,
            metrics=batch_metrics(report),
            artifacts=[report.summary.csv, report.summary.failures] if hashed else [],
            run_name=f"batch {report.shard}",
            experiment=self.experiment,
            tracking_uri=self.tracking_uri,
            parent_run_id=self.parent_run_id,
            tags={
                "medseg.command": "batch",
                "medseg.stage": "predict",
                "shard": str(report.shard),
            }
            | ({} if hashed else {"artifacts_withheld": "folder case ids"}),
            home=self.home,
            killed=killed,
        )


def _add_published(report: BatchReport, todo: list[BatchScan]) -> None:
    """Count as done the scans that workers published before they were stopped, whose result
    had not reached this process yet."""
    known = {result.case_id for result in report.done} | set(report.elsewhere)
    known |= {failure.case_id for failure in report.failed}
    for scan in todo:
        result = None if scan.case_id in known else layout.read_result(report.out_dir, scan.case_id)
        if result is not None:
            report.done.append(result)


def pinned_model_uri(model_uri: str, tracking_uri: str | None) -> str:
    """The alias resolved to a version once, so all workers load the same model.

    Raises:
        ModelLoadError: the model URI cannot be resolved (e.g. an unknown alias).
    """
    from medseg.tracking.registry import pin_model_uri

    with _tracking_errors_stop_the_batch():
        return pin_model_uri(model_uri, tracking_uri=tracking_uri)


def model_channels(model_uri: str, tracking_uri: str | None) -> int:
    """The model's input channels, from its package's signature (its networks stay unloaded):
    more than one, and the inventory makes one scan of a case's nnU-Net channel files.

    Raises:
        ModelLoadError: there is no such model, or it is not a medseg model.
    """
    from medseg.tracking.packaging import model_input_channels

    with _tracking_errors_stop_the_batch():
        return model_input_channels(model_uri, tracking_uri=tracking_uri)


def model_agreement(model_uri: str, tracking_uri: str | None) -> dict[str, float]:
    """The model's stored argmax agreement with fp32 per reduced precision (its networks stay
    unloaded): what ``--precision`` may use.

    Raises:
        ModelLoadError: there is no such model.
    """
    from medseg.tracking.packaging import stored_precision_agreement

    with _tracking_errors_stop_the_batch():
        return stored_precision_agreement(model_uri, tracking_uri=tracking_uri)


@contextlib.contextmanager
def _tracking_errors_stop_the_batch() -> Iterator[None]:
    from medseg.errors import TrackingError

    try:
        yield
    except TrackingError as error:
        raise ModelLoadError(str(error)) from error


def _record_unreadable(inventory: Inventory, shard: Shard, out_dir: Path) -> list[ScanFailure]:
    """A failure record for each unreadable or corrupt file of this shard."""
    failures = []
    for bad in inventory.unreadable:
        if not shard.owns(bad.key):
            continue
        failure = ScanFailure(
            case_id=bad.case_id, reason=bad.reason, error_type=bad.error_type, source=bad.source
        )
        layout.write_failure(out_dir, failure)
        failures.append(failure)
    return failures


def _process(
    todo: list[BatchScan],
    settings: WorkerSettings,
    pool_size: int,
    report: BatchReport,
    on_progress: ProgressCallback | None,
) -> None:
    """Run ``todo`` in worker processes, recording each outcome as it arrives; then wait for
    the scans that another run was working on."""
    progress = on_progress or (lambda phase, done, total: None)
    finished = itertools.count(1)

    def advance() -> None:
        progress("Scans", next(finished), len(todo))

    progress("Scans", 0, len(todo))
    busy = _run_scans(process_scan, todo, settings, pool_size, report, advance)
    if busy:
        logger.warning("%d scans are in progress in another batch run: waiting for them", len(busy))
        wait_for_holder = functools.partial(process_scan, wait_if_busy=True)
        _run_scans(wait_for_holder, busy, settings, min(pool_size, len(busy)), report, advance)


def _run_scans(
    function: Callable[[BatchScan], object],
    scans: list[BatchScan],
    settings: WorkerSettings,
    pool_size: int,
    report: BatchReport,
    advance: Callable[[], None],
) -> list[BatchScan]:
    """Run ``function`` over ``scans`` in workers and record the outcomes; returns the scans
    that another process holds."""
    busy: list[BatchScan] = []
    outcomes = run_isolated(
        function,
        scans,
        workers=pool_size,
        initializer=start_worker,
        initargs=(settings,),
        preload=PRELOAD_MODULES,
    )
    with contextlib.closing(outcomes):  # an exception here stops the workers at once
        for scan, outcome in outcomes:
            if isinstance(outcome, ModelLoadError):
                raise outcome
            if isinstance(outcome, ScanElsewhere):
                if not outcome.done:
                    busy.append(scan)
                    continue
                report.elsewhere.append(scan.case_id)
            elif isinstance(outcome, ScanResult):
                layout.clear_failure(settings.out_dir, scan.case_id)
                report.done.append(outcome)
            else:
                failure = (
                    outcome
                    if isinstance(outcome, ScanFailure)
                    else _failure(scan, outcome, settings)
                )
                if isinstance(outcome, BaseException):
                    name = scan.source if settings.with_source else scan.case_id
                    logger.warning("%s: %s", name, failure.reason)
                layout.write_failure(settings.out_dir, failure)
                report.failed.append(failure)
            advance()
    return busy


def _failure(scan: BatchScan, error: BaseException, settings: WorkerSettings) -> ScanFailure:
    """The failure record of a scan whose worker raised or died."""
    reason = str(error) if isinstance(error, WorkerDiedError) else f"unexpected {error!r}"
    return ScanFailure(
        case_id=scan.case_id,
        reason=settings.reason_for_records(reason, scan),
        error_type=type(error).__name__,
        source=scan.source if settings.with_source else None,
    )


def _metric_name(structure: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", structure)


def batch_metrics(report: BatchReport) -> dict[str, float]:
    """The run's metrics: counts, timing and mean volume per structure (mL) over the shard's
    complete scans."""
    seconds = [result.seconds for result in report.done]
    metrics = {
        "scans_found": report.scans_found,
        "scans_in_shard": report.scans_in_shard,
        "done": len(report.done),
        "skipped": len(report.skipped),
        "done_elsewhere": len(report.elsewhere),
        "failed": len(report.failed),
        "seconds_total": round(report.seconds_total, 3),
        "seconds_per_scan_mean": sum(seconds) / len(seconds) if seconds else 0.0,
    }
    complete = report.done + [
        result
        for case_id in report.skipped + report.elsewhere
        if (result := layout.read_result(report.out_dir, case_id)) is not None
    ]
    volumes: dict[str, list[float]] = {}
    for result in complete:
        for name, ml in result.volumes_ml.items():
            volumes.setdefault(name, []).append(ml)
    for name, values in volumes.items():
        metrics[f"volume_ml_mean.{_metric_name(name)}"] = sum(values) / len(values)
    return metrics
