"""Fixtures of the fault tests: phantom data, planned once, and a model trained on nothing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from medseg.datasets import import_dataset
from medseg.preprocess.config import PlanOptions
from medseg.preprocess.plan import plan_manifest
from tests.packaged_model import log_tiny_unet
from tests.phantoms import write_phantom_nifti


@dataclass(frozen=True)
class PhantomPlan:
    """A manifest of three labelled phantoms (labels 0..5) and its plan file."""

    manifest: Path
    plan: Path


@pytest.fixture(scope="session")
def phantom_plan(tmp_path_factory: pytest.TempPathFactory) -> PhantomPlan:
    root = tmp_path_factory.mktemp("phantom_plan")
    for seed in range(3):
        write_phantom_nifti(
            root / "dataset" / "images" / f"case{seed}.nii.gz",
            seed,
            label_path=root / "dataset" / "labels" / f"case{seed}.nii.gz",
        )
    manifest = root / "phantoms.jsonl"
    import_dataset(root / "dataset", manifest_path=manifest, val_fraction=0.34, modality="CT")
    options = PlanOptions(patch_size_3d=(32, 32, 32), patch_size_2d=(32, 32))
    return PhantomPlan(manifest, plan_manifest(manifest, options=options).save(root / "plan.json"))


@pytest.fixture(scope="session")
def phantom_model(phantom_plan: PhantomPlan, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tracking URI of a SQLite store holding ``models:/phantoms/1``: a U-Net with
    untrained weights for the phantom plan's six labels."""
    from medseg.preprocess.plan import Plan

    store = f"sqlite:///{tmp_path_factory.mktemp('phantom_model')}/mlflow.db"
    log_tiny_unet(Plan.load(phantom_plan.plan), store, registered_model_name="phantoms")
    return store
