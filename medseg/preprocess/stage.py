"""The preprocess stage: every case of a manifest through the plan into the cache.

Cases run in parallel worker processes; one failing case is reported and the others go on.
Re-running with unchanged inputs (manifest checksums) and plan does nothing; an interrupted
run resumes with the cases that are not complete (see ``medseg.preprocess.cache``).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypedDict

from medseg import shutdown
from medseg.errors import MedsegError
from medseg.io.atomic import write_json_atomic
from medseg.io.formats import read_volume
from medseg.manifest import ManifestRecord, read_manifest, resolve
from medseg.parallel import process_pool
from medseg.preprocess.border_weights import border_weight_map
from medseg.preprocess.cache import CachedCase
from medseg.preprocess.case import preprocess_case
from medseg.preprocess.plan import Plan
from medseg.progress import ProgressCallback

logger = logging.getLogger(__name__)


class CaseStatus(StrEnum):
    """What happened to one case."""

    DONE = "done"
    UNCHANGED = "unchanged"
    FAILED = "failed"


@dataclass
class CaseOutcome:
    """One case's result."""

    case_id: str
    status: CaseStatus
    reason: str = ""
    seconds: float = 0.0


@dataclass
class PreprocessReport:
    """All outcomes of a preprocess run."""

    cache_dir: Path
    outcomes: list[CaseOutcome] = field(default_factory=list)

    def with_status(self, status: CaseStatus) -> list[CaseOutcome]:
        """Outcomes with ``status``."""
        return [o for o in self.outcomes if o.status is status]

    @property
    def exit_code(self) -> int:
        """0 when no case failed, 1 otherwise."""
        return 1 if self.with_status(CaseStatus.FAILED) else 0


def configuration_cache_dir(cache_dir: Path, plan: Plan, configuration: str) -> Path:
    """Where ``configuration`` trains from: ``cache_dir`` (the plan's spacing), or for a
    configuration with a spacing of its own (``3d_lowres``) ``cache_dir/<configuration>``
    (the same layout, cases at that spacing)."""
    cache_dir = Path(cache_dir)
    if configuration in plan.low_resolution:
        return cache_dir / configuration
    return cache_dir


def preprocess_configuration(
    manifest_path: Path,
    *,
    plan: Plan,
    configuration: str,
    cache_dir: Path,
    data_root: Path | None = None,
    workers: int = 1,
) -> Path:
    """Preprocess every case for ``configuration`` (at its own spacing) into its cache
    (``configuration_cache_dir``; cases already current are kept); returns that folder."""
    folder = configuration_cache_dir(cache_dir, plan, configuration)
    preprocess_manifest(
        manifest_path,
        plan=plan.for_configuration(configuration),
        cache_dir=folder,
        data_root=data_root,
        workers=workers,
    )
    return folder


def preprocess_manifest(
    manifest_path: Path,
    *,
    plan: Plan,
    cache_dir: Path,
    data_root: Path | None = None,
    workers: int = 1,
    force: bool = False,
    on_progress: ProgressCallback | None = None,
) -> PreprocessReport:
    """Preprocess every case of ``manifest_path`` into ``cache_dir``."""
    records = read_manifest(manifest_path)
    cache_dir = Path(cache_dir)
    plan.save(cache_dir / "plan.json")
    report = PreprocessReport(cache_dir=cache_dir)
    jobs: _JobArguments = {
        "manifest_path": Path(manifest_path),
        "data_root": data_root,
        "plan_json": plan.model_dump_json(),
        "cache_dir": cache_dir,
        "force": force,
    }
    if workers <= 1:
        for done, record in enumerate(records, start=1):
            report.outcomes.append(process_one(record, **jobs))
            if on_progress:
                on_progress("Preprocessing", done, len(records))
    else:
        with process_pool(workers, preload=[__name__]) as pool:
            futures = [pool.submit(process_one, record, **jobs) for record in records]
            for done, future in enumerate(as_completed(futures), start=1):
                report.outcomes.append(future.result())
                if on_progress:
                    on_progress("Preprocessing", done, len(futures))
    report.outcomes.sort(key=lambda o: o.case_id)
    write_json_atomic(
        cache_dir / "preprocess_report.json",
        {"outcomes": [vars(o) | {"status": o.status.value} for o in report.outcomes]},
    )
    return report


class _JobArguments(TypedDict):
    """``process_one``'s keyword arguments, the same for every case."""

    manifest_path: Path
    data_root: Path | None
    plan_json: str
    cache_dir: Path
    force: bool


def process_one(
    record: ManifestRecord,
    *,
    manifest_path: Path,
    data_root: Path | None,
    plan_json: str,
    cache_dir: Path,
    force: bool,
) -> CaseOutcome:
    """Preprocess one case in a worker; every error becomes a failed outcome."""
    start = time.perf_counter()
    plan = Plan.model_validate_json(plan_json)
    cached = CachedCase(cache_dir, record.case_id)
    inputs = cached.input_record(
        image_sha256=record.sha256, label_sha256=record.label_sha256, plan_digest=plan.digest()
    )
    if not force and cached.is_current(inputs):
        return CaseOutcome(record.case_id, CaseStatus.UNCHANGED)
    try:
        image_path, label_path = resolve(record, manifest_path, data_root)
        image = read_volume(image_path)
        label = read_volume(label_path) if label_path is not None else None
        case = preprocess_case(image, label, plan, case_id=record.case_id)
        weights = None
        if case.label is not None and plan.border_weights.enabled:
            options = plan.border_weights
            weights = border_weight_map(
                case.label,
                spacing_mm=plan.target_spacing,
                w0=options.w0,
                sigma_voxels=options.sigma_voxels,
                class_balance=options.class_balance,
            )
        cached.write(case, weights=weights, record=inputs)
    except MedsegError as error:
        logger.warning("%s: %s", record.case_id, error)
        return CaseOutcome(record.case_id, CaseStatus.FAILED, reason=str(error))
    except Exception as error:  # one bad case must not stop the others
        shutdown.reraise_if_stopping(error)
        logger.exception("unexpected error in %s", record.case_id)
        return CaseOutcome(
            record.case_id, CaseStatus.FAILED, reason=f"unexpected {type(error).__name__}: {error}"
        )
    return CaseOutcome(record.case_id, CaseStatus.DONE, seconds=time.perf_counter() - start)
