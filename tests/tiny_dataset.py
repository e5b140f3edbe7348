"""A small phantom CT dataset, planned and preprocessed once per session (training, inference).

Five phantoms (``tests/phantoms.py``: 49 x 39 x 33 voxels at 3 x 3 x 4 mm, labels 0..5: liver,
spleen, both kidneys, spine) imported as a flat dataset with one validation case, planned with
32^3 patches and preprocessed: about 5 seconds, no downloaded data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from medseg.datasets import import_dataset
from medseg.preprocess.config import PlanOptions
from medseg.preprocess.plan import Plan, plan_manifest
from medseg.preprocess.stage import preprocess_manifest
from medseg.train.config import TrainConfig
from tests.phantoms import write_phantom_dataset, write_phantom_dataset_json

SEEDS = range(5)
CASES = [f"phantom_{seed:03d}" for seed in SEEDS]
PLAN_OPTIONS = {"patch_size_3d": (32, 32, 32), "patch_size_2d": (32, 32)}
# 60 steps that learn the large structures of the phantoms (float32, threads=1): liver and
# spine Dice 0.81 each on the training phantoms (measured); without mirroring, which would swap
# the kidneys. The untrained network scores liver 0.005, spine 0.13; learning_rate 1e-9 too.
LEARNING = {
    "epochs": 2,
    "steps_per_epoch": 30,
    "optimizer": "adamw",
    "learning_rate": 0.003,
    "network": {"deep_supervision": True, "base_filters": 8},
    "augmentation": {"mirror_probability": 0.0},
    "validation": {"every_epochs": 1000, "max_cases": 1, "overlay_pictures": 0},
}
LEARNT_DICE = {"liver": 0.6, "spine": 0.6}


@dataclass(frozen=True)
class TinyDataset:
    manifest: Path
    plan: Plan
    plan_path: Path
    cache: Path

    @property
    def data(self) -> Path:
        """The dataset folder: ``images/``, ``labels/``, ``dataset.json``."""
        return self.manifest.parent / "data"

    @property
    def num_classes(self) -> int:
        """Label values including background (6)."""
        return len(self.plan.label_names)


def write_tiny_dataset(folder: Path) -> Path:
    """The five phantoms of the tiny dataset as a flat dataset with ``dataset.json`` in
    ``folder``; returns ``folder``."""
    write_phantom_dataset(folder, SEEDS)
    return write_phantom_dataset_json(folder)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> TinyDataset:
    root = tmp_path_factory.mktemp("tiny_phantoms")
    manifest = root / "phantoms.jsonl"
    import_dataset(write_tiny_dataset(root / "data"), manifest_path=manifest, val_fraction=0.2)
    plan = plan_manifest(manifest, options=PlanOptions(**PLAN_OPTIONS))
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


def learning_config(**overrides: object) -> TrainConfig:
    """``LEARNING``: a short training that learns the large structures (``LEARNT_DICE``)."""
    return tiny_config(**(LEARNING | overrides))
