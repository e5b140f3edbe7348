"""The end-to-end demo: synthetic CT phantoms as real DICOM, then the pipeline stages.

Today it runs ingest, plan and preprocess (later stages extend it): the phantoms' DICOM
series are ingested with their label maps exactly as a user's scans would be, planned and
cached for training. Everything is created from the repository alone; nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from medseg.demo.phantom import PHANTOM_LABELS, generate_demo_dataset
from medseg.ingest import IngestReport, ingest
from medseg.ingest.case_ids import CaseIdScheme
from medseg.ingest.stage import ProgressCallback
from medseg.manifest import write_label_names
from medseg.preprocess.config import PlanOptions
from medseg.preprocess.plan import plan_manifest
from medseg.preprocess.stage import PreprocessReport, preprocess_manifest

# Phantoms come at mixed spacings; a 2 mm grid and a small memory budget train on CPU in minutes.
DEMO_PLAN_OPTIONS = PlanOptions(target_spacing=(2.0, 2.0, 2.0), memory_budget_gb=1.0)


@dataclass
class DemoResult:
    """Where the demo put things, and the ingest report."""

    data_dir: Path
    ingested_dir: Path
    ingest: IngestReport
    plan_path: Path
    preprocess: PreprocessReport


def _dataset_is_current(data_dir: Path, *, n_cases: int, seed: int) -> bool:
    try:
        summary = json.loads((data_dir / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return summary.get("seed") == seed and len(summary.get("cases", [])) == n_cases


def run_demo(
    out_dir: Path, *, n_cases: int = 6, seed: int = 0, on_progress: ProgressCallback | None = None
) -> DemoResult:
    """Generate (once) the phantom dataset under ``out_dir/data`` and ingest it.

    Re-running with the same arguments regenerates nothing and converts nothing.
    """
    out_dir = Path(out_dir)
    data_dir, ingested_dir = out_dir / "data", out_dir / "ingested"
    if not _dataset_is_current(data_dir, n_cases=n_cases, seed=seed):
        if on_progress:
            on_progress("Generating phantoms", 0, n_cases)
        generate_demo_dataset(data_dir, n_cases=n_cases, seed=seed)
        if on_progress:
            on_progress("Generating phantoms", n_cases, n_cases)
    report = ingest(
        data_dir / "dicom",
        ingested_dir,
        case_ids=CaseIdScheme.FOLDER,
        labels_dir=data_dir / "labels",
        on_progress=on_progress,
    )
    write_label_names(PHANTOM_LABELS, report.manifest_path)
    plan_path = out_dir / "plan.json"
    plan = plan_manifest(report.manifest_path, options=DEMO_PLAN_OPTIONS)
    plan.save(plan_path)
    cached = preprocess_manifest(
        report.manifest_path,
        plan=plan,
        cache_dir=out_dir / "cache",
        workers=2,
        on_progress=(lambda done, total: on_progress("Preprocessing", done, total))
        if on_progress
        else None,
    )
    return DemoResult(data_dir, ingested_dir, report, plan_path, cached)
