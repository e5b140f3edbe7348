"""A planned and preprocessed dataset of nested-region phantoms (``tests.phantoms``), for the
tests of region-based training: a few seconds, nothing downloaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medseg.datasets import import_dataset
from medseg.preprocess.config import PlanOptions
from medseg.preprocess.plan import Plan, plan_manifest
from medseg.preprocess.stage import preprocess_manifest
from tests.phantoms import write_nested_regions_dataset


@dataclass(frozen=True)
class NestedDataset:
    manifest: Path
    plan: Plan
    cache: Path
    cases: list[str]


def nested_regions_dataset(
    folder: Path, *, cases: int, val_fraction: float, preprocess: bool = True
) -> NestedDataset:
    """``cases`` nested-region phantoms under ``folder/data``, imported (``val_fraction`` of
    them for validation), planned with 32^3 and 32^2 patches and, with ``preprocess``, cached
    in ``folder/cache``."""
    ids = write_nested_regions_dataset(folder / "data", range(cases))
    manifest = folder / "nested.jsonl"
    import_dataset(folder / "data", manifest_path=manifest, val_fraction=val_fraction)
    options = PlanOptions(patch_size_3d=(32, 32, 32), patch_size_2d=(32, 32))
    plan = plan_manifest(manifest, options=options)
    if preprocess:
        preprocess_manifest(manifest, plan=plan, cache_dir=folder / "cache", workers=1)
    return NestedDataset(manifest, plan, folder / "cache", ids)
