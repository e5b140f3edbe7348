"""The MSD hippocampus set, planned and preprocessed once, for the training benchmarks.

``data_manifests/msd_hippocampus.jsonl`` holds the cases and the train/val split; the images
live under ``--data-root`` (default ``../shared/data``). Plan and cache go to ``work``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medseg.preprocess.config import PlanOptions
from medseg.preprocess.plan import Plan, plan_manifest
from medseg.preprocess.stage import preprocess_manifest
from medseg.train.loop import CaseSplit, split_cases

REPOSITORY = Path(__file__).resolve().parents[1]
MANIFEST = REPOSITORY / "data_manifests/msd_hippocampus.jsonl"
DEFAULT_DATA_ROOT = REPOSITORY.parent / "shared" / "data"


@dataclass(frozen=True)
class PreparedHippocampus:
    """The plan, the preprocessed cache and the split."""

    manifest: Path
    plan: Plan
    cache: Path
    split: CaseSplit


def prepare_hippocampus(data_root: Path, work: Path, *, workers: int = 2) -> PreparedHippocampus:
    """Plan (default options) and preprocess every case into ``work/cache`` (cached runs
    are skipped by the preprocess stage)."""
    work.mkdir(parents=True, exist_ok=True)
    plan = plan_manifest(MANIFEST, options=PlanOptions(), data_root=data_root, workers=workers)
    plan.save(work / "plan.json")
    cache = work / "cache"
    preprocess_manifest(MANIFEST, plan=plan, cache_dir=cache, data_root=data_root, workers=workers)
    return PreparedHippocampus(MANIFEST, plan, cache, split_cases(MANIFEST))
