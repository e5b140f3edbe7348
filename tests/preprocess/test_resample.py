"""Resampling keeps world geometry and label values."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.preprocess.config import LabelResampling
from medseg.preprocess.resample import (
    resample_image,
    resample_labels,
    resample_nearest,
    resampled_affine,
    resampled_shape,
)


def _ball(shape: tuple[int, int, int], centre: np.ndarray, radius: float) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return (np.linalg.norm(grid - centre, axis=-1) <= radius).astype(np.uint8)


@pytest.mark.parametrize(
    ("shape", "spacing", "target", "expected"),
    [
        ((100, 80, 40), (1.0, 1.0, 2.5), (1.0, 1.0, 1.0), (100, 80, 100)),
        ((512, 512, 200), (0.7, 0.7, 1.0), (1.5, 1.5, 1.5), (239, 239, 133)),
        ((3, 3, 3), (1.0, 1.0, 1.0), (10.0, 10.0, 10.0), (1, 1, 1)),
    ],
)
def test_resampled_shape_covers_the_same_field_of_view(shape, spacing, target, expected) -> None:
    assert resampled_shape(shape, spacing, target) == expected


@pytest.mark.parametrize(("order", "tolerance_mm"), [(0, 0.6), (1, 0.2), (3, 0.2)])
def test_resampling_keeps_an_object_at_its_world_position(order: int, tolerance_mm: float) -> None:
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = [-20.0, 15.0, 7.0]
    centre = np.array([20.0, 27.0, 9.0])
    mask = _ball((48, 52, 20), centre, 6.0).astype(np.float32)
    new_shape = resampled_shape(mask.shape, (0.8, 0.8, 2.5), (1.2, 1.2, 1.2))
    resampled = resample_image(mask, new_shape, order=order)
    new_affine = resampled_affine(affine, mask.shape, new_shape)

    def world_centroid(array: np.ndarray, aff: np.ndarray) -> np.ndarray:
        index = np.array(np.nonzero(array > 0.5)).mean(axis=1)
        return aff[:3, :3] @ index + aff[:3, 3]

    assert np.allclose(
        world_centroid(resampled, new_affine), world_centroid(mask, affine), atol=tolerance_mm
    )


@pytest.mark.parametrize("mode", list(LabelResampling))
def test_label_resampling_never_invents_values(mode: LabelResampling) -> None:
    rng = np.random.default_rng(1)
    labels = np.zeros((30, 30, 30), np.uint8)
    for value in (1, 2, 7):
        labels[tuple(rng.integers(3, 27, size=3))] = value
        labels = np.maximum(labels, _ball(labels.shape, rng.integers(8, 22, size=3), 5) * value)
    resampled = resample_labels(labels, (45, 41, 17), mode=mode)
    assert set(np.unique(resampled)) <= set(np.unique(labels))
    assert {1, 2, 7} <= set(np.unique(resampled))


def test_nearest_round_trip_on_the_same_grid_is_exact() -> None:
    labels = np.random.default_rng(2).integers(0, 5, size=(17, 9, 13)).astype(np.uint8)
    assert np.array_equal(resample_nearest(labels, labels.shape), labels)
    up = resample_nearest(labels, (34, 18, 26))  # exact 2x: every voxel duplicated
    assert np.array_equal(resample_nearest(up, labels.shape), labels)


def test_linear_resampling_of_a_constant_stays_constant() -> None:
    image = np.full((2, 10, 11, 12), 3.5, np.float32)
    out = resample_image(image, (7, 20, 5), order=1)
    assert out.shape == (2, 7, 20, 5) and np.allclose(out, 3.5)
