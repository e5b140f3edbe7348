"""A small hippocampus dataset, planned and preprocessed once per session (training, inference)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from medseg.datasets import import_dataset
from medseg.preprocess.config import PlanOptions
from medseg.preprocess.plan import Plan, plan_manifest
from medseg.preprocess.stage import preprocess_manifest
from medseg.train.config import TrainConfig

CASES = [
    "hippocampus_001",
    "hippocampus_003",
    "hippocampus_004",
    "hippocampus_006",
    "hippocampus_008",
]


@dataclass(frozen=True)
class TinyDataset:
    manifest: Path
    plan: Plan
    plan_path: Path
    cache: Path


@pytest.fixture(scope="session")
def tiny_dataset(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> TinyDataset:
    root = tmp_path_factory.mktemp("tiny_hippocampus")
    for folder in ("images", "labels"):
        (root / "data" / folder).mkdir(parents=True)
        for case in CASES:
            shutil.copy(
                shared_data / "msd_hippocampus" / folder / f"{case}.nii.gz", root / "data" / folder
            )
    manifest = root / "hippo.jsonl"
    import_dataset(root / "data", manifest_path=manifest, val_fraction=0.2, modality="MR")
    options = PlanOptions(patch_size_3d=(32, 32, 32), patch_size_2d=(32, 32))
    plan = plan_manifest(manifest, options=options)
    plan_path = plan.save(root / "plan.json")
    preprocess_manifest(manifest, plan=plan, cache_dir=root / "cache", workers=1)
    return TinyDataset(manifest, plan, plan_path, root / "cache")


def tiny_config(**overrides: object) -> TrainConfig:
    """A few steps of a very small network: seconds on a CPU."""
    settings = {
        "epochs": 2,
        "steps_per_epoch": 3,
        "batch_size": 2,
        "num_workers": 0,
        "threads": 1,
        "network": {"deep_supervision": True, "base_filters": 4},
        "validation": {"max_cases": 1, "overlay_pictures": 1},
        "learning_rate": 0.01,
    }
    settings.update(overrides)
    return TrainConfig.model_validate(settings)
