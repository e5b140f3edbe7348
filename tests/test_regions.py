"""Region declarations (dataset.json, label-names sidecar, plan), painting and region scores."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from medseg.datasets import import_dataset
from medseg.errors import ConfigError, RegionsError
from medseg.evaluate.metrics import dice_from_confusion, iou_from_confusion
from medseg.manifest import (
    label_names_path,
    load_label_names,
    load_regions,
    read_label_names,
    read_regions,
)
from medseg.preprocess.config import PlanOptions
from medseg.preprocess.plan import Plan, plan_manifest
from medseg.regions import Region, RegionSet, paint_regions, parse_regions, region_confusion
from tests.phantoms import NESTED_REGIONS, write_nested_regions_dataset

BRATS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}
NESTED = RegionSet(
    regions=[Region(name=name, labels=labels) for name, labels in NESTED_REGIONS.items()],
    regions_class_order=[1, 2, 3],
)


def test_brats_style_labels_declare_one_region_per_entry_naming_the_value_it_paints() -> None:
    regions = parse_regions(BRATS, [1, 2, 3], where="dataset.json")
    assert [(r.name, r.labels) for r in regions.regions] == [
        ("whole tumor", [1, 2, 3]),
        ("tumor core", [2, 3]),
        ("enhancing tumor", [3]),
    ]
    assert regions.label_names() == {
        0: "background",
        1: "whole tumor",
        2: "tumor core",
        3: "enhancing tumor",
    }


@pytest.mark.parametrize(
    ("order", "problem"),
    [
        (None, "need 'regions_class_order' (the label value each of the 3 regions paints)"),
        ([1, 2], "'regions_class_order' has 2 entries for 3 regions"),
        ([1, 2, 3, 4], "'regions_class_order' has 4 entries for 3 regions"),
        ([1, 2, 2], "'regions_class_order' repeats a value: [1, 2, 2]"),
        ([1, 2, 0], "'regions_class_order' must be a list of label values > 0"),
        ([1, 2, 4], "region 'whole tumor' holds label values [3] that no region paints"),
    ],
)
def test_inconsistent_region_declarations_are_refused_naming_the_file(
    order: list[int] | None, problem: str
) -> None:
    with pytest.raises(RegionsError, match=r"^data/dataset\.json: ") as error:
        parse_regions(BRATS, order, where="data/dataset.json")
    assert problem in str(error.value)


def test_a_region_of_a_non_integer_value_is_refused() -> None:
    with pytest.raises(RegionsError, match=r"label 'core': \[2, 'x'\] is not a label value"):
        parse_regions({"core": [2, "x"]}, [2], where="x.json")


def test_painting_follows_regions_class_order_later_regions_overwrite() -> None:
    probabilities = np.array(
        [
            [0.9, 0.9, 0.9, 0.2, 0.5],  # whole
            [0.1, 0.8, 0.7, 0.6, 0.5],  # core
            [0.0, 0.3, 0.9, 0.9, 0.5],  # enhancing
        ]
    )
    assert paint_regions(probabilities, [1, 2, 3]).tolist() == [1, 2, 3, 3, 0]
    # another order: the whole tumour painted last covers everything inside it
    assert paint_regions(probabilities[::-1], [3, 2, 1]).tolist() == [1, 1, 1, 2, 0]


def test_region_confusion_gives_each_regions_dice_and_iou_at_the_value_it_paints() -> None:
    reference = np.array([0, 1, 2, 3, 3, 0, 4])
    painted = np.array([0, 1, 1, 3, 2, 2, 3])  # the last voxel is ignored in the reference
    matrix = region_confusion(painted, reference, NESTED, ignore_label=4)
    dice, iou = dice_from_confusion(matrix), iou_from_confusion(matrix)
    # whole: TP 4, FP 1, FN 0; core: TP 2, FP 1, FN 1; enhancing: TP 1, FP 0, FN 1
    assert dice[1:].tolist() == pytest.approx([8 / 9, 4 / 6, 2 / 3])
    assert iou[1:].tolist() == pytest.approx([4 / 5, 2 / 4, 1 / 2])
    masks = np.stack([np.isin(painted, r.labels) for r in NESTED.regions])
    assert np.array_equal(region_confusion(masks, reference, NESTED, ignore_label=4), matrix)


def test_import_keeps_the_regions_in_the_sidecar_and_the_plan_records_them(
    tmp_path: Path,
) -> None:
    write_nested_regions_dataset(tmp_path / "data", range(2))
    manifest = tmp_path / "nested.jsonl"
    report = import_dataset(tmp_path / "data", manifest_path=manifest, val_fraction=0.5)
    assert report.regions == NESTED and len(report.records) == 2
    assert read_label_names(manifest) == {0: "background", 1: "whole", 2: "core", 3: "enhancing"}
    sidecar = json.loads(label_names_path(manifest).read_text())
    assert sidecar["regions"] == NESTED_REGIONS and sidecar["regions_class_order"] == [1, 2, 3]
    assert read_regions(manifest) == NESTED
    # evaluate's --labels reads either the sidecar or the dataset.json
    assert load_regions(tmp_path / "data" / "dataset.json") == NESTED
    assert load_label_names(tmp_path / "data" / "dataset.json") == read_label_names(manifest)
    plan = plan_manifest(manifest, options=PlanOptions(patch_size_3d=(32, 32, 32)))
    assert plan.region_set == NESTED
    assert (plan.num_outputs, plan.activation) == (3, "sigmoid")
    assert Plan.model_validate_json(plan.model_dump_json()).region_set == NESTED
    # a plan from before regions (no such keys) loads as a softmax plan
    payload = plan.model_dump(mode="json")
    old = Plan.model_validate({k: v for k, v in payload.items() if not k.startswith("regions")})
    assert (old.region_set, old.activation, old.num_outputs) == (None, "softmax", 4)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(payload | {"regions_class_order": [1, 2]}))
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: .*one label value per region"):
        Plan.load(path)


def test_an_inconsistent_dataset_json_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    write_nested_regions_dataset(tmp_path / "data", range(1))
    path = tmp_path / "data" / "dataset.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"regions_class_order": [1, 2]}))
    manifest = tmp_path / "nested.jsonl"
    with pytest.raises(RegionsError, match=f"^{re.escape(str(path))}: 'regions_class_order' has 2"):
        import_dataset(tmp_path / "data", manifest_path=manifest)
    assert not manifest.exists()


def test_old_sidecars_and_plans_without_regions_still_read(tmp_path: Path) -> None:
    manifest = tmp_path / "old.jsonl"
    label_names_path(manifest).write_text('{"labels": {"0": "background", "1": "liver"}}')
    assert read_label_names(manifest) == {0: "background", 1: "liver"}
    assert read_regions(manifest) is None
    assert read_regions(tmp_path / "none.jsonl") is None
    label_names_path(manifest).write_text('{"labels": {"0": "bg"}, "regions_class_order": [1]}')
    with pytest.raises(RegionsError, match="'regions_class_order' is given but no label"):
        read_regions(manifest)
