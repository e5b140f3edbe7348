"""Cross-validation folds: deterministic, a partition of the non-test labelled cases, stored
beside the plan in nnU-Net's layout, and refused when they no longer fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg.errors import ConfigError
from medseg.train.folds import (
    cross_validation_cases,
    load_or_make_folds,
    make_folds,
    read_folds,
    splits_path,
)
from tests.tiny_dataset import CASES, TinyDataset

IDS = [f"case_{n:03d}" for n in range(23)]


def test_folds_partition_the_cases_evenly_and_the_same_way_every_time() -> None:
    folds = make_folds(list(reversed(IDS)), folds=5, seed=3)
    held_out = [case for fold in folds for case in fold.val]
    assert sorted(held_out) == IDS  # each case validates exactly once
    assert sorted(len(fold.val) for fold in folds) == [4, 4, 5, 5, 5]
    for fold in folds:
        assert sorted(fold.train + fold.val) == IDS and not set(fold.train) & set(fold.val)
    assert make_folds(IDS, folds=5, seed=3) == folds  # input order does not matter
    assert make_folds(IDS, folds=5, seed=4) != folds


@pytest.mark.parametrize(("cases", "folds", "problem"), [(IDS, 1, "at least 2"), (IDS[:3], 5, "3")])
def test_impossible_folds_are_refused(cases: list[str], folds: int, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        make_folds(cases, folds=folds)


def _manifest_with_a_test_case(dataset: TinyDataset, folder: Path, test_case: str) -> Path:
    lines = []
    for line in dataset.manifest.read_text().splitlines():
        record = json.loads(line)
        if record["case_id"] == test_case:
            record["split"] = "test"
        lines.append(json.dumps(record))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_test_cases_are_in_no_fold_and_the_folds_are_stored_beside_the_plan(
    tiny_dataset: TinyDataset, tmp_path: Path
) -> None:
    manifest = _manifest_with_a_test_case(tiny_dataset, tmp_path, CASES[2])
    plan = tmp_path / "plan.json"
    assert cross_validation_cases(manifest) == [c for c in CASES if c != CASES[2]]
    folds = load_or_make_folds(plan, manifest, folds=2)
    assert CASES[2] not in {case for fold in folds for case in fold.train + fold.val}
    stored = json.loads(splits_path(plan).read_text())  # nnU-Net's splits_final.json layout
    assert stored == [{"train": f.train, "val": f.val} for f in folds]
    assert load_or_make_folds(plan, manifest, folds=2) == folds


def test_stored_folds_that_no_longer_fit_are_refused(
    tiny_dataset: TinyDataset, tmp_path: Path
) -> None:
    plan = tmp_path / "plan.json"
    load_or_make_folds(plan, tiny_dataset.manifest, folds=2)
    with pytest.raises(ConfigError, match=r"splits\.json: holds 2 folds, but 3 were asked"):
        load_or_make_folds(plan, tiny_dataset.manifest, folds=3)
    # a case moved to the test split after the folds were made
    manifest = _manifest_with_a_test_case(tiny_dataset, tmp_path, CASES[4])
    with pytest.raises(ConfigError, match=f"1 cases not a labelled training case.*{CASES[4]}"):
        load_or_make_folds(plan, manifest, folds=2)


def test_nnunet_splits_are_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "splits_final.json"
    path.write_text(
        json.dumps([{"train": ["b", "c"], "val": ["a"]}, {"train": ["a"], "val": ["b"]}])
    )
    folds = read_folds(path)
    assert [fold.val for fold in folds] == [["a"], ["b"]]
    path.write_text(json.dumps({"train": []}))
    with pytest.raises(ConfigError, match=r"splits_final\.json: not a list"):
        read_folds(path)
