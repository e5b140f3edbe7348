"""The geometry convention of ``medseg.volume``."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import InvalidAffineError
from medseg.volume import Volume


def _lps_like_affine() -> np.ndarray:
    # i runs towards Left, j towards Posterior, k towards Superior (a typical DICOM axial stack).
    return np.array(
        [[-0.7, 0, 0, 90.0], [0, -0.8, 0, 110.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]], dtype=float
    )


def test_spacing_and_orientation_come_from_the_affine() -> None:
    volume = Volume(np.zeros((4, 5, 6), np.int16), _lps_like_affine())
    assert volume.spacing_mm == pytest.approx((0.7, 0.8, 2.5))
    assert volume.orientation == "LPS"
    assert volume.voxel_volume_ml == pytest.approx(0.7 * 0.8 * 2.5 / 1000)


def test_to_closest_ras_flips_axes_without_moving_any_voxel_in_world_space() -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 1000, size=(4, 5, 6)).astype(np.int16)
    volume = Volume(array, _lps_like_affine())
    ras = volume.to_closest_ras()
    assert ras.orientation == "RAS"
    assert ras.shape == (4, 5, 6)
    # every voxel keeps its value at the same world position
    for index in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        world = volume.affine_ras @ np.array([*index, 1.0])
        ras_index = np.linalg.solve(ras.affine_ras, world)[:3]
        assert np.allclose(ras_index, np.round(ras_index))
        assert ras.array[tuple(np.round(ras_index).astype(int))] == array[index]


def test_permuted_axes_become_ras() -> None:
    affine = np.array([[0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, -2.0, 0, 0], [0, 0, 0, 1]])
    volume = Volume(np.arange(24).reshape(2, 3, 4), affine)
    ras = volume.to_closest_ras()
    assert ras.orientation == "RAS"
    assert ras.shape == (4, 2, 3)
    assert ras.spacing_mm == pytest.approx((1.0, 1.0, 2.0))


@pytest.mark.parametrize(
    ("affine", "message"),
    [
        (np.eye(3), "must be 4x4"),
        (np.diag([1.0, 0.0, 1.0, 1.0]), "singular"),
        (np.diag([1.0, np.nan, 1.0, 1.0]), "NaN"),
        (np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1.0]]), "last row"),
    ],
)
def test_invalid_affines_are_rejected_with_the_reason(affine: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidAffineError, match=message):
        Volume(np.zeros((2, 2, 2)), affine)


def test_with_array_keeps_geometry_and_refuses_other_shapes() -> None:
    volume = Volume(np.zeros((2, 3, 4)), _lps_like_affine(), {"modality": "CT"})
    labels = volume.with_array(np.ones((2, 3, 4), np.uint8))
    assert labels.same_grid(volume)
    assert labels.metadata == {"modality": "CT"}
    with pytest.raises(Exception, match="spatial shape"):
        volume.with_array(np.ones((3, 3, 4)))


def test_to_orientation_of_undoes_to_closest_ras() -> None:
    affine = np.array([[0, 0, -1.5, 10], [-0.8, 0, 0, 20], [0, 2.0, 0, -5], [0, 0, 0, 1.0]])
    volume = Volume(np.arange(60).reshape(3, 4, 5), affine)
    back = volume.to_closest_ras().to_orientation_of(affine)
    assert np.array_equal(back.array, volume.array)
    assert np.allclose(back.affine_ras, affine)
