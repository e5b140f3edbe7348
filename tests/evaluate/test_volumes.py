"""Organ volumes equal TotalSegmentator's statistics.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.errors import GeometryMismatchError
from medseg.evaluate.volumes import structure_statistics
from medseg.io.nifti import read_nifti
from medseg.volume import Volume

REFERENCE = "totalsegmentator_ref"


def test_volumes_and_intensities_equal_totalsegmentator_statistics(shared_data: Path) -> None:
    root = shared_data / REFERENCE
    names = {
        int(k): v for k, v in json.loads((root / "dataset.json").read_text())["labels"].items()
    }
    labels = read_nifti(root / "tests/reference_files/example_seg_fast.nii.gz")
    image = read_nifti(root / "tests/reference_files/example_ct_sm.nii.gz")
    ours = structure_statistics(labels, label_names=names, image=image)
    reference = json.loads(
        (root / "tests/reference_files/example_seg_fast/statistics.json").read_text()
    )
    present = [name for name in ours if ours[name]["voxels"] > 0]
    assert len(present) == 40
    for name, values in ours.items():
        expected = reference[name]
        assert values["volume"] == pytest.approx(expected["volume"], rel=1e-3)
        assert values["volume_ml"] == pytest.approx(expected["volume"] / 1000.0, rel=1e-3)
        assert values["intensity"] == pytest.approx(expected["intensity"], abs=0.05)


def test_volume_follows_the_affine_not_the_voxel_count() -> None:
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2:6, 2:6, 2:4] = 1  # 32 voxels
    oblique = np.eye(4)
    angle = np.radians(30)
    oblique[:3, :3] = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    ) @ np.diag([0.5, 0.8, 2.5])
    stats = structure_statistics(
        Volume(labels, oblique), label_names={0: "bg", 1: "organ", 2: "absent"}
    )
    assert stats["organ"]["volume_ml"] == pytest.approx(32 * 0.5 * 0.8 * 2.5 / 1000)
    assert stats["absent"] == {"volume": 0.0, "volume_ml": 0.0, "voxels": 0, "intensity": 0.0}


def test_scan_on_another_grid_is_refused() -> None:
    labels = Volume(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    image = Volume(np.zeros((4, 4, 4)), np.diag([2.0, 1.0, 1.0, 1.0]))
    with pytest.raises(GeometryMismatchError, match="different grids"):
        structure_statistics(labels, label_names={1: "a"}, image=image)
