"""``medseg evaluate`` with region declarations in ``--labels``: per-region metrics from the
region masks of both label maps, beside the per-label metrics."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medseg.io.nifti import write_nifti
from medseg.volume import Volume
from tests.faults.commands import run_medseg, said
from tests.phantoms import NESTED_REGIONS


def test_evaluate_reports_each_region_beside_each_label(tmp_path: Path) -> None:
    reference = np.zeros((4, 4, 4), np.uint8)
    reference[0, :, :] = 1  # 16 voxels of 1, 16 of 2, 8 of 3
    reference[1, :, :] = 2
    reference[2, :2, :] = 3
    prediction = reference.copy()
    prediction[2, :2, :] = 2  # the enhancing part predicted as core: whole and core still right
    prediction[3, 0, :] = 1  # 4 voxels of whole tumour too many
    for folder, array in (("pred", prediction), ("ref", reference)):
        write_nifti(Volume(array, np.eye(4)), tmp_path / folder / "case.nii.gz")
    labels = tmp_path / "dataset.json"
    labels.write_text(
        json.dumps(
            {"labels": {"background": 0, **NESTED_REGIONS}, "regions_class_order": [1, 2, 3]}
        )
    )
    result = run_medseg(
        "evaluate", tmp_path / "pred", tmp_path / "ref", "--labels", labels, "--out", tmp_path / "o"
    )
    assert result.exit_code == 0, said(result)
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    dice = {name: values["dice"] for name, values in summary["regions"].items()}
    # whole: 40 reference voxels, 44 predicted, all 40 inside; core: 24 and 24, the same;
    # enhancing: 8 reference voxels, none predicted
    assert dice == pytest.approx({"whole": 80 / 84, "core": 1.0, "enhancing": 0.0})
    assert list(summary["structures"]) == ["label_1", "label_2", "label_3"]
    assert summary["structures"]["label_2"]["dice"] == pytest.approx(32 / 40)
    rows = list(csv.DictReader((tmp_path / "o" / "metrics.csv").open()))
    assert [row["structure"] for row in rows] == [
        "label_1",
        "label_2",
        "label_3",
        "region whole",
        "region core",
        "region enhancing",
    ]
    assert summary["region_mean_dice"] == pytest.approx((80 / 84 + 1.0 + 0.0) / 3)
    page = (tmp_path / "o" / "report.html").read_text()
    assert "<h2>Regions</h2>" in page and "<tr><td>core</td><td>1</td>" in page
    assert "mean Dice over the regions 0.6508" in page
    printed = said(result)
    assert "│ region core │ 1.0000 │" in printed and "mean region Dice 0.6508" in printed
