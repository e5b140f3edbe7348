"""The low-resolution configuration (``3d_lowres``) trains from its own cache at its own
spacing, and the model it registers predicts at that spacing (``--fast``, and by default, as a
model of only low-resolution members)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from medseg.io.nifti import read_nifti
from medseg.preprocess.cache import load_cache
from medseg.preprocess.config import PlanOptions
from medseg.preprocess.plan import plan_manifest
from tests.faults.commands import run_medseg
from tests.phantoms import write_phantom_nifti
from tests.tiny_dataset import CASES, PLAN_OPTIONS, TinyDataset, tiny_config


def test_3d_lowres_trains_from_its_own_cache_and_predicts_at_its_spacing(
    tiny_dataset: TinyDataset, tmp_path: Path
) -> None:
    options = PlanOptions(**PLAN_OPTIONS, low_resolution=True)
    plan = plan_manifest(tiny_dataset.manifest, options=options)
    plan_path = plan.save(tmp_path / "plan" / "plan.json")
    coarse = plan.for_configuration("3d_lowres").target_spacing
    assert np.prod(coarse) > 4 * np.prod(plan.target_spacing)
    config = tmp_path / "train.yaml"
    settings = tiny_config(configuration="3d_lowres", epochs=1)
    config.write_text(yaml.safe_dump(settings.model_dump(exclude_unset=True)))
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    trained = run_medseg(
        "train", "--manifest", tiny_dataset.manifest, "--plan", plan_path, "--config", config,
        "--run-dir", tmp_path / "run", "--tracking-uri", tracking, "--register", "tiny-lowres",
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    # only the configuration's own cache was built, at its spacing
    cache = plan_path.parent / "cache"
    assert [p.name for p in cache.iterdir()] == ["3d_lowres"]
    coarse_cases = load_cache(cache / "3d_lowres", CASES)
    full_cases = load_cache(tiny_dataset.cache, CASES)
    for low, full in zip(coarse_cases, full_cases, strict=True):
        ratio = full.image[0].size / low.image[0].size
        expected = np.prod(coarse) / np.prod(plan.target_spacing)
        assert 0.7 * expected <= ratio <= 1.3 * expected, (ratio, expected)
    scan = write_phantom_nifti(tmp_path / "scan.nii.gz", seed=3)
    for fast in (["--fast"], []):
        out = tmp_path / f"out{len(fast)}"
        predicted = run_medseg(
            "predict", scan, "--model", "models:/tiny-lowres@champion", "--tracking-uri",
            tracking, "--out", out, "--case-ids", "folder", *fast,
        )  # fmt: skip
        assert predicted.exit_code == 0, predicted.output
        labels = read_nifti(out / "scan.nii.gz")
        assert labels.same_grid(read_nifti(scan))
        assert set(np.unique(labels.array)) <= set(plan.label_names)
