"""What differs between two voxel grids, in words and millimetres."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.evaluate.grid import grid_difference
from medseg.volume import Volume


def _volume(shape=(10, 12, 8), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), axes=None):
    affine = np.eye(4)
    affine[:3, :3] = (np.eye(3) if axes is None else np.asarray(axes, float)) * spacing
    affine[:3, 3] = origin
    return Volume(np.zeros(shape, np.uint8), affine)


ROTATED_10_DEGREES = [
    [np.cos(np.radians(10)), -np.sin(np.radians(10)), 0],
    [np.sin(np.radians(10)), np.cos(np.radians(10)), 0],
    [0, 0, 1],
]


@pytest.mark.parametrize(
    ("other", "expected"),
    [
        (
            _volume(origin=(-42.0, 0.0, 0.0)),
            "origin (0, 0, 0) vs (-42, 0, 0) mm, 42 mm apart "
            "(same shape 10x12x8 voxels, spacing 1x1x2 mm)",
        ),
        (
            _volume(shape=(10, 12, 9)),
            "shape 10x12x8 vs 10x12x9 voxels (same spacing 1x1x2 mm)",
        ),
        (
            _volume(spacing=(1.0, 1.0, 2.5)),
            "spacing 1x1x2 vs 1x1x2.5 mm (same shape 10x12x8 voxels)",
        ),
        (
            _volume(axes=ROTATED_10_DEGREES),
            "axes turned up to 10 degrees apart (same shape 10x12x8 voxels, spacing 1x1x2 mm)",
        ),
        (
            _volume(axes=np.diag([-1.0, -1.0, 1.0])),
            "axes RAS vs LPS turned up to 180 degrees apart "
            "(same shape 10x12x8 voxels, spacing 1x1x2 mm)",
        ),
        (
            _volume(shape=(5, 6, 4), spacing=(2.0, 2.0, 4.0), origin=(0.0, 3.0, 4.0)),
            "shape 10x12x8 vs 5x6x4 voxels; spacing 1x1x2 vs 2x2x4 mm; "
            "origin (0, 0, 0) vs (0, 3, 4) mm, 5 mm apart",
        ),
        (
            _volume(origin=(0.0, 0.0, 0.0005)),
            "affines differ by up to 0.0005 mm (same shape 10x12x8 voxels, spacing 1x1x2 mm)",
        ),
    ],
    ids=["origin", "shape", "spacing", "axes", "flipped", "everything", "within the tolerance"],
)
def test_grid_difference_names_what_differs_and_what_agrees(other: Volume, expected: str) -> None:
    difference = grid_difference(_volume(), other, names=("prediction a", "reference b"))
    assert difference == f"prediction a and reference b are on different voxel grids: {expected}"
