"""The cascade's geometry: the box of the structures plus a margin in millimetres, the crop
that keeps every voxel where it was in scanner space, and the label map pasted back."""

from __future__ import annotations

import numpy as np

from medseg.infer.cascade import box_fraction, paste, structures_box
from medseg.volume import Volume


def _labels() -> Volume:
    """40 x 30 x 20 voxels of 2 x 2 x 5 mm, oblique, with structure 3 in [10:14, 5:9, 8:10]."""
    array = np.zeros((40, 30, 20), np.uint8)
    array[10:14, 5:9, 8:10] = 3
    array[30, 25, 15] = 1
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([2.0, 2.0, 5.0])
    affine[:3, 3] = [-40.0, 12.5, 100.0]
    return Volume(array, affine)


def test_the_box_holds_the_structures_plus_the_margin_within_the_scan() -> None:
    labels = _labels()
    # 10 mm: 5 voxels along the 2 mm axes, 2 along the 5 mm one
    assert structures_box(labels, [3], margin_mm=10.0) == [(5, 19), (0, 14), (6, 12)]
    assert structures_box(labels, [3, 1], margin_mm=0.0) == [(10, 31), (5, 26), (8, 16)]
    assert structures_box(labels, [2], margin_mm=10.0) is None
    assert box_fraction([(0, 20), (0, 30), (0, 10)], labels.shape) == 0.25


def test_a_crop_keeps_every_voxel_in_place_and_pastes_back() -> None:
    labels = _labels()
    box = [(5, 19), (0, 14), (6, 12)]
    crop = labels.crop(box)
    assert crop.shape == (14, 14, 6)
    corner = labels.affine_ras @ [5, 0, 6, 1]
    np.testing.assert_allclose(crop.affine_ras @ [0, 0, 0, 1], corner)
    np.testing.assert_allclose(crop.affine_ras[:3, :3], labels.affine_ras[:3, :3])
    back = paste(crop, labels, box)
    assert back.same_grid(labels)
    expected = labels.array.copy()
    expected[30, 25, 15] = 0  # outside the box: background
    np.testing.assert_array_equal(back.array, expected)
