"""Run a pipeline: stages in order, each in ``<work dir>/<stage name>/``, skipped when up to date.

MLflow: the pipeline is one parent run (experiment from the pipeline file, run name = pipeline
name) with one child run per stage, including skipped stages (tagged ``skipped`` with the run
that produced the reused outputs). Stages that train or batch-predict open their own child run.
The tracking store is checked before the first stage (``TrackingUnavailableError``). A
pipeline killed mid-run leaves its runs RUNNING and a run file in the work dir; the next
pipeline run in that work dir first marks them FAILED (``medseg.tracking.stale.mark_stale_runs``),
then an interrupted training stage resumes, reopening its run, which then ends FINISHED.

A stage that fails stops the pipeline (later stages need its outputs); what earlier stages
produced stays, so re-running continues from the failed stage. Partial failures inside a
stage (one bad scan) are reported and the pipeline goes on, with exit code 1 at the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg import shutdown
from medseg.errors import MedsegError, PipelineError
from medseg.manifest import sha256_file
from medseg.pipeline.records import (
    StageRecord,
    encode_provides,
    load_record,
    output_digest,
    stage_fingerprint,
)
from medseg.pipeline.spec import PipelineSpec, StageSpec, check_stage_inputs
from medseg.pipeline.stages import StageContext, StageResult
from medseg.progress import ProgressCallback
from medseg.tracking.runs import RunTracker
from medseg.tracking.stale import mark_stale_runs
from medseg.tracking.store import tracking_uri

logger = logging.getLogger(__name__)

StageEvent = Callable[[str, str, "StageRecord | None"], None]  # (stage, status, record)


@dataclass
class PipelineReport:
    """Outcome of a pipeline run: one record per stage that was reached."""

    name: str
    work_dir: Path
    run_id: str | None
    tracking_uri: str
    records: list[StageRecord] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def failed_stage(self) -> StageRecord | None:
        return next((r for r in self.records if r.status == "failed"), None)

    @property
    def exit_code(self) -> int:
        """0 when every stage ran or was skipped without problems, 1 otherwise."""
        return 1 if self.failed_stage or any(r.problems for r in self.records) else 0

    def provided(self, key: str) -> Any:
        """The latest value of ``key`` any stage provided, or None."""
        for record in reversed(self.records):
            if key in record.provides:
                return record.values()[key]
        return None


@dataclass(frozen=True)
class RunSelection:
    """Which stages to run: ``force`` reruns all; ``from_stage`` reruns it and all later
    ones; ``to_stage`` stops after it."""

    force: bool = False
    from_stage: str | None = None
    to_stage: str | None = None

    def check(self, spec: PipelineSpec) -> None:
        """Refuse ``--from``/``--to`` values that name no stage of ``spec``.

        Raises:
            PipelineError: ``from_stage`` or ``to_stage`` is not a stage of ``spec``.
        """
        names = spec.stage_names()
        for option, value in (("--from", self.from_stage), ("--to", self.to_stage)):
            if value is not None and value not in names:
                raise PipelineError(f"{option} {value!r}: no such stage; stages: {names}")


def run_pipeline(
    spec: PipelineSpec,
    *,
    work_dir: Path,
    data_root: Path | None = None,
    selection: RunSelection = RunSelection(),
    tracking: str | None = None,
    on_stage: StageEvent | None = None,
    on_progress: ProgressCallback | None = None,
) -> PipelineReport:
    """Run ``spec``'s stages into ``work_dir`` (see the module docstring).

    Raises:
        PipelineError: no data root, ``--from``/``--to`` name no stage, or a stage names a
            file or folder that does not exist (checked before the first stage runs).
        TrackingUnavailableError: the tracking store cannot be reached or written.
    """
    selection.check(spec)
    root = Path(data_root).resolve() if data_root else spec.data_root
    if root is None:
        raise PipelineError(f"{spec.path}: give --data-root (the pipeline names none)")
    work_dir = Path(work_dir).resolve()
    check_stage_inputs(spec, data_root=root, work_dir=work_dir, until=selection.to_stage)
    uri = tracking_uri(tracking)
    report = PipelineReport(spec.name, work_dir, None, uri)
    mark_stale_runs(work_dir, uri)  # before any run opens: a resumed training reopens its own
    parent = RunTracker(tracking_uri=uri, home=work_dir, role="pipeline").start(
        experiment=spec.experiment,
        run_name=spec.name,
        tags={"medseg.pipeline": spec.name, "medseg.stage": "pipeline"},
    )
    report.run_id = parent.run_id
    parent.log_params(
        {"pipeline": {"name": spec.name, "stages": spec.stage_names(), "force": selection.force}}
    )
    parent.set_tags({"pipeline.sha256": sha256_file(spec.path)})
    event = on_stage or (lambda stage, status, record: None)
    provided: dict[str, Any] = {}
    digests: dict[str, str] = {}  # provided key -> digest of the stage that provided it
    forcing = selection.force
    try:
        for stage in spec.stages:
            forcing = forcing or stage.name == selection.from_stage
            context = StageContext(
                name=stage.name,
                folder=work_dir / stage.name,
                data_root=root,
                config_root=spec.config_root,
                tracking_uri=uri,
                experiment=spec.experiment,
                parent_run_id=parent.run_id,
                provided=dict(provided),
                on_progress=on_progress,
            )
            record = _run_or_skip(
                stage, context, digests, force=forcing, report=report, event=event
            )
            report.records.append(record)
            if record.status == "failed":
                break
            provided.update(record.values())
            digests.update(dict.fromkeys(record.provides, record.digest))
            if stage.name == selection.to_stage:
                break
        _log_pipeline_outcome(parent, report)
    except BaseException:
        parent.end(failed=True)
        raise
    parent.end(failed=report.failed_stage is not None)
    return report


def _run_or_skip(
    stage: StageSpec,
    context: StageContext,
    digests: dict[str, str],
    *,
    force: bool,
    report: PipelineReport,
    event: StageEvent,
) -> StageRecord:
    definition = stage.definition
    try:
        needs = definition.needs(stage.options)
        upstream = {key: digests[key] for key in needs if key in digests}
        missing = [key for key in needs if key not in digests]
        if missing:
            raise PipelineError(
                f"stage {stage.name!r} needs {missing}, which no earlier stage provides"
            )
        fingerprint = stage_fingerprint(
            kind=stage.kind,
            options=stage.options.model_dump(mode="json"),
            inputs=definition.inputs(context, stage.options),
            upstream=upstream,
        )
    except MedsegError as error:
        record = StageRecord(stage.name, stage.kind, "failed", "", error=str(error))
        event(stage.name, "failed", record)
        return record
    previous = load_record(context.folder)
    if (
        not force
        and previous is not None
        and previous.status == "done"
        and previous.fingerprint == fingerprint
        and previous.outputs_exist()
    ):
        _log_skipped(context, stage, previous)
        report.skipped.append(stage.name)
        event(stage.name, "skipped", previous)
        return previous
    interrupted = previous is not None and previous.status == "running"
    context.resume = interrupted and previous is not None and previous.fingerprint == fingerprint
    context.folder.mkdir(parents=True, exist_ok=True)
    event(stage.name, "running", None)
    record = _execute(stage, context, fingerprint)
    report.ran.append(stage.name)
    event(stage.name, record.status, record)
    return record


def _execute(stage: StageSpec, context: StageContext, fingerprint: str) -> StageRecord:
    """Run one stage in its MLflow child run; return its record."""
    definition = stage.definition
    record = StageRecord(stage.name, stage.kind, "running", fingerprint)
    record.save(context.folder)
    start = time.perf_counter()
    tracker = None
    if not definition.own_run:
        tracker = RunTracker(tracking_uri=context.tracking_uri).start(
            experiment=context.experiment,
            run_name=stage.name,
            tags={"medseg.stage": stage.kind, "medseg.stage.status": "ran"},
            parent_run_id=context.parent_run_id,
        )
        tracker.log_params({"options": stage.options.model_dump(mode="json")})
    try:
        result: StageResult = definition.run(context, stage.options, tracker)
    except MedsegError as error:
        logger.error("stage %s failed: %s", stage.name, error)
        record.status, record.error = "failed", str(error)
    except Exception as error:  # a stage's bug must still leave a record and a failed run
        shutdown.reraise_if_stopping(error)
        logger.exception("stage %s failed unexpectedly", stage.name)
        record.status, record.error = "failed", f"unexpected {type(error).__name__}: {error}"
    else:
        provides, paths = encode_provides(result.provides)
        record.status = "done"
        record.provides, record.paths, record.problems = provides, paths, result.problems
        record.digest = output_digest(fingerprint, provides, deterministic=definition.deterministic)
        record.run_id = result.run_id or (tracker.run_id if tracker else None)
        if tracker is not None:
            tracker.log_params(result.params)
            tracker.log_metrics({**result.metrics, "problems": len(result.problems)}, step=0)
        record.summary = result.summary
    finally:
        record.seconds = time.perf_counter() - start
        if tracker is not None:
            tracker.end(failed=record.status != "done")
    record.save(context.folder)
    return record


def _log_skipped(context: StageContext, stage: StageSpec, previous: StageRecord) -> None:
    tracker = RunTracker(tracking_uri=context.tracking_uri).start(
        experiment=context.experiment,
        run_name=stage.name,
        tags={
            "medseg.stage": stage.kind,
            "medseg.stage.status": "skipped",
            "medseg.stage.reused_run_id": previous.run_id or "",
        },
        parent_run_id=context.parent_run_id,
    )
    tracker.end()


def _log_pipeline_outcome(parent: RunTracker, report: PipelineReport) -> None:
    metrics: dict[str, float] = {
        "stages_ran": len(report.ran),
        "stages_skipped": len(report.skipped),
        "problems": sum(len(r.problems) for r in report.records),
    }
    for record in report.records:
        metrics[f"seconds_{record.stage}"] = record.seconds
    parent.log_metrics(metrics, step=0)
    # Counts and statuses only: records also hold local paths and problem details.
    stages = [
        {
            "stage": r.stage,
            "kind": r.kind,
            "status": r.status,
            "seconds": r.seconds,
            "problems": len(r.problems),
            "run_id": r.run_id,
        }
        for r in report.records
    ]
    parent.log_dict(stages, "pipeline/stages.json")
