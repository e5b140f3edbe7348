"""Cross-validation and ``medseg select`` on a region-based plan: the out-of-fold probabilities
are sigmoids per region, and every candidate is scored by its Dice per region."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.evaluate.metrics import dice_from_confusion, mean_foreground
from medseg.preprocess.cache import load_cache
from medseg.regions import region_confusion
from medseg.select.selection import select
from medseg.train.cross_validation import cross_validate
from medseg.train.folds import load_or_make_folds
from tests.nested_regions import nested_regions_dataset
from tests.tiny_dataset import tiny_config

TINY = {"epochs": 1, "steps_per_epoch": 3, "validation": {"max_cases": 1, "overlay_pictures": 0}}


def test_select_ranks_configurations_by_their_dice_per_region(tmp_path: Path) -> None:
    dataset = nested_regions_dataset(tmp_path, cases=4, val_fraction=0.25)
    manifest, plan, cases = dataset.manifest, dataset.plan, dataset.cases
    folds = load_or_make_folds(tmp_path / "plan.json", manifest, folds=2)
    for configuration in ("3d", "2d"):
        cross_validate(
            folds=folds,
            manifest_path=manifest,
            plan=plan,
            cache_dir=dataset.cache,
            config=tiny_config(**TINY, configuration=configuration),
            run_dir=tmp_path / configuration,
            tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        )
    selection = select([tmp_path / "3d", tmp_path / "2d"], plan=plan, cache_dir=dataset.cache)
    assert sorted(c.name for c in selection.candidates) == ["2d", "3d", "3d + 2d"]
    assert selection.decisions == [] and not selection.rules.active()
    selection.save(tmp_path)
    stored = json.loads((tmp_path / "selection.json").read_text())
    assert (
        stored["postprocessed_cv_mean_dice"] == stored["cv_mean_dice"] == selection.best.mean_dice
    )
    assert "| 3d + 2d" in (tmp_path / "selection.md").read_text()
    regions = plan.region_set
    assert regions is not None
    for candidate in selection.candidates:
        total = np.zeros((4, 4), np.int64)
        for case in load_cache(dataset.cache, cases):
            stored = [_oof(tmp_path / name, case.case_id) for name in candidate.members]
            assert stored[0].shape[0] == 3 and 0 <= stored[0].min() <= stored[0].max() <= 1
            mean = sum(stored) / len(stored)
            total += region_confusion(np.asarray(mean) > 0.5, np.asarray(case.label), regions)
        assert candidate.mean_dice == pytest.approx(mean_foreground(dice_from_confusion(total)))
    for name in ("3d", "2d"):  # a configuration alone scores its CV Dice, per region
        [alone] = [c for c in selection.candidates if c.members == (name,)]
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert sorted(summary["cv_dice"]) == ["core", "enhancing", "whole"]
        assert alone.mean_dice == pytest.approx(summary["cv_mean_dice"])


def _oof(folder: Path, case_id: str) -> np.ndarray:
    [path] = folder.glob(f"fold_*/oof/{case_id}.npy")
    return np.load(path).astype(np.float32)
