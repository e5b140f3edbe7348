"""The cascade's geometry: where the coarse networks put the structures on their own grid, that
box carried onto the scan's voxels, the box plus a margin in millimetres, the crop that keeps
every voxel where it was in scanner space, and the label map pasted back."""

from __future__ import annotations

import numpy as np

from medseg.infer.cascade import (
    box_fraction,
    box_onto_grid,
    paste,
    structures_box,
    tight_box,
    where_structures_win,
)
from medseg.preprocess.resample import resampled_affine
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


def test_the_structures_win_where_their_class_is_the_argmax_or_their_region_is_on() -> None:
    maps = np.zeros((3, 4, 1, 1), np.float32)
    maps[:, 0, 0, 0] = [0.5, 0.3, 0.2]  # background
    maps[:, 1, 0, 0] = [0.2, 0.5, 0.3]  # class 1
    maps[:, 2, 0, 0] = [0.3, 0.35, 0.35]  # a tie: the first class wins, as np.argmax
    maps[:, 3, 0, 0] = [0.1, 0.2, 0.7]  # class 2
    before = maps.copy()
    np.testing.assert_array_equal(where_structures_win(maps, [1])[:, 0, 0], [0, 1, 1, 0])
    np.testing.assert_array_equal(where_structures_win(maps, [2])[:, 0, 0], [0, 0, 0, 1])
    np.testing.assert_array_equal(maps, before)
    # regions painted 2 then 1: region index 1 paints value 1, above 0.5 at voxel 3 only
    regions = where_structures_win(maps, [1], regions_class_order=[2, 1, 3])
    np.testing.assert_array_equal(regions[:, 0, 0], [0, 0, 0, 0])
    regions = where_structures_win(maps, [3], regions_class_order=[2, 1, 3])
    np.testing.assert_array_equal(regions[:, 0, 0], [0, 0, 0, 1])


def test_a_box_on_a_coarser_grid_covers_the_same_voxels_of_the_scan() -> None:
    """The coarse grid is the scan reoriented to RAS at twice its spacing; the scan's axes run
    another way (rotated), so the box's axes are swapped and flipped on the way."""
    scan = _labels()
    ras = scan.to_closest_ras()
    coarse_shape = [n // 2 for n in ras.shape]
    coarse_affine = resampled_affine(ras.affine_ras, ras.shape, coarse_shape)
    box = [(2, 4), (1, 3), (3, 5)]
    mask = np.zeros(ras.shape, bool)
    mask[4:8, 2:6, 6:10] = True  # the coarse voxels' cover on the RAS grid
    expected = tight_box(Volume(mask, ras.affine_ras).to_orientation_of(scan.affine_ras).array)
    assert box_onto_grid(box, coarse_affine, scan) == expected
    assert expected != [(4, 8), (2, 6), (6, 10)]  # the axes did change
    # a box reaching past the scan stops at its border
    assert box_onto_grid([(-2, 17), (-2, 22), (-2, 12)], coarse_affine, scan) == [
        (0, 40),
        (0, 30),
        (0, 20),
    ]
