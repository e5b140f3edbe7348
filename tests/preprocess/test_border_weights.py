"""Tests of the U-Net border-weight maps (Ronneberger et al. 2015, eq. 2)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg.errors import BorderWeightError
from medseg.preprocess.border_weights import border_weight_map, class_balance_map, label_structures

# Two one-voxel objects (j = 1 and j = 5) with a gap of three background voxels between them.
STRIP = np.array([[0, 1, 0, 0, 0, 1, 0]])


def _brute_force_map(
    labels: np.ndarray,
    *,
    spacing_mm: tuple[float, ...],
    w0: float,
    sigma_mm: float,
    on_foreground: bool,
) -> np.ndarray:
    """Eq. 2 with a full-image distance transform per structure and an explicit sort."""
    structure_ids, n_structures = label_structures(labels)
    distances = np.stack(
        [
            ndimage.distance_transform_edt(structure_ids != s, sampling=spacing_mm)
            for s in range(1, n_structures + 1)
        ]
    )
    nearest_two = np.sort(distances, axis=0)[:2]
    term = w0 * np.exp(-((nearest_two[0] + nearest_two[1]) ** 2) / (2 * sigma_mm**2))
    if not on_foreground:
        term[labels > 0] = 0.0
    return class_balance_map(labels).astype(np.float64) + term


def _random_label_map(
    shape: tuple[int, ...], *, foreground_fraction: float, seed: int
) -> np.ndarray:
    """Smooth random blobs of labels 1..3, some touching, some merely near each other."""
    rng = np.random.default_rng(seed)
    blobs = ndimage.gaussian_filter(rng.random(shape), 1.0)
    classes = ndimage.gaussian_filter(rng.random(shape), 2.0)
    foreground = blobs > np.quantile(blobs, 1.0 - foreground_fraction)
    class_of_voxel = 1 + np.digitize(classes, np.quantile(classes, [1 / 3, 2 / 3]))
    return np.where(foreground, class_of_voxel, 0).astype(np.int16)


# Middle gap voxel of STRIP: d1 = d2 = 2 voxels. Expected values, worked out by hand:
#   spacing (1, 1), sigma 5 vox = 5 mm:  1 + 10 * exp(-(2 + 2)^2 / (2 * 5^2))
#                                      = 1 + 10 * exp(-0.32) = 1 + 10 * 0.7261490 = 8.261490
#   spacing (1, 2): d1 = d2 = 4 mm, sigma = 5 * min(1, 2) = 5 mm:
#                                        1 + 10 * exp(-64 / 50) = 1 + 10 * 0.2780373 = 3.780373
#   spacing (3, 2): d1 = d2 = 4 mm, sigma = 5 * min(3, 2) = 10 mm:
#                                        1 + 10 * exp(-64 / 200) = 8.261490 (same as isotropic)
#   spacing (1, 1), sigma_mm 2:          1 + 10 * exp(-16 / 8) = 1 + 10 * 0.1353353 = 2.353353
#   spacing (1, 1), w0 5:                1 + 5 * 0.7261490 = 4.630745
# Background weight w_c(background) is 1 with and without class balancing.
@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"spacing_mm": (1.0, 1.0)}, 8.261490),
        ({"spacing_mm": (1.0, 2.0)}, 3.780373),
        ({"spacing_mm": (3.0, 2.0)}, 8.261490),
        ({"spacing_mm": (1.0, 1.0), "sigma_mm": 2.0}, 2.353353),
        ({"spacing_mm": (1.0, 1.0), "w0": 5.0}, 4.630745),
        ({"spacing_mm": (1.0, 1.0), "class_balance": False}, 8.261490),
    ],
)
def test_gap_voxel_between_two_objects_matches_hand_value(kwargs: dict, expected: float) -> None:
    weights = border_weight_map(STRIP, **kwargs)
    assert weights[0, 3] == pytest.approx(expected, abs=1e-5)


# Whole STRIP, spacing 1, sigma 5, class balance on (N_bg = 5, N_fg = 2 -> w_c(fg) = 5/2 = 2.5):
#   j = 0, 6: d1 = 1, d2 = 5:  1 + 10 * exp(-36 / 50) = 1 + 10 * 0.4867523 = 5.867523
#   j = 2, 3, 4: d1 + d2 = 4:  1 + 10 * exp(-16 / 50) = 8.261490
#   j = 1, 5 (foreground):     2.5, or with the border term d1 = 0, d2 = 4:
#                              2.5 + 10 * exp(-16 / 50) = 9.761490
@pytest.mark.parametrize(
    ("on_foreground", "expected_row"),
    [
        (False, [5.867523, 2.5, 8.261490, 8.261490, 8.261490, 2.5, 5.867523]),
        (True, [5.867523, 9.761490, 8.261490, 8.261490, 8.261490, 9.761490, 5.867523]),
    ],
)
def test_strip_matches_hand_values(on_foreground: bool, expected_row: list[float]) -> None:
    weights = border_weight_map(
        STRIP, spacing_mm=(1.0, 1.0), border_term_on_foreground=on_foreground
    )
    np.testing.assert_allclose(weights[0], expected_row, atol=1e-5)


def test_output_is_float32_with_input_shape() -> None:
    weights = border_weight_map(STRIP.astype(np.uint8), spacing_mm=(1.0, 1.0))
    assert weights.dtype == np.float32
    assert weights.shape == STRIP.shape


# w0 = 0 isolates w_c = N_background / N_c (most frequent class when there is no background).
@pytest.mark.parametrize(
    ("row", "class_balance", "expected_row"),
    [
        ([0, 0, 0, 0, 0, 0, 1, 1, 2], True, [1, 1, 1, 1, 1, 1, 3, 3, 6]),  # 6/2, 6/1
        ([0, 0, 0, 0, 0, 0, 1, 1, 2], False, [1] * 9),
        ([1, 1, 1, 2], True, [1, 1, 1, 3]),  # no background: class 1 (3 voxels) is 1
        ([False, False, False, True], True, [1, 1, 1, 3]),
        ([0, 0, 0, 7], True, [1, 1, 1, 3]),  # label values need not be consecutive
    ],
)
def test_class_balance_term(row: list, class_balance: bool, expected_row: list[float]) -> None:
    weights = border_weight_map(
        np.array([row]), spacing_mm=(1.0, 1.0), w0=0.0, class_balance=class_balance
    )
    np.testing.assert_allclose(weights[0], expected_row, rtol=1e-6)


@pytest.mark.parametrize("class_balance", [True, False])
def test_no_structures_gives_background_weight_everywhere(class_balance: bool) -> None:
    weights = border_weight_map(
        np.zeros((6, 5), dtype=np.int32), spacing_mm=(1.0, 1.0), class_balance=class_balance
    )
    np.testing.assert_array_equal(weights, np.ones((6, 5), dtype=np.float32))


@pytest.mark.parametrize(
    ("shape", "blob", "spacing_mm"),
    [
        ((12, 12), (slice(3, 7), slice(4, 9)), (1.0, 1.0)),
        ((10, 12, 8), (slice(2, 5), slice(3, 9), slice(1, 4)), (0.7, 0.7, 2.5)),
    ],
)
def test_single_structure_gets_no_border_term(
    shape: tuple[int, ...], blob: tuple[slice, ...], spacing_mm: tuple[float, ...]
) -> None:
    labels = np.zeros(shape, dtype=np.int16)
    labels[blob] = 2
    weights = border_weight_map(labels, spacing_mm=spacing_mm)
    np.testing.assert_array_equal(weights, class_balance_map(labels))


def test_background_far_from_structures_gets_background_weight() -> None:
    labels = np.zeros((1, 200), dtype=np.int16)
    labels[0, [0, 2]] = 1
    weights = border_weight_map(labels, spacing_mm=(1.0, 1.0))
    assert weights[0, 199] == 1.0


# Voxel (0, 0) in the first map and (0, 1) in the third touch both objects by a face:
#   d1 = d2 = 1:  1 + 10 * exp(-(1 + 1)^2 / 50) = 1 + 10 * 0.9231163 = 10.231163
@pytest.mark.parametrize(
    ("labels", "n_structures", "position", "expected"),
    [
        ([[0, 1], [2, 1]], 2, (0, 0), 10.231163),  # touching, different labels: two structures
        ([[0, 1], [1, 1]], 1, (0, 0), 1.0),  # touching, same label: one structure
        ([[1, 0], [0, 1]], 2, (0, 1), 10.231163),  # corner contact only: two structures
    ],
)
def test_structures_are_face_connected_components_of_each_label(
    labels: list, n_structures: int, position: tuple[int, int], expected: float
) -> None:
    labels = np.array(labels)
    assert label_structures(labels)[1] == n_structures
    weights = border_weight_map(labels, spacing_mm=(1.0, 1.0), class_balance=False)
    assert weights[position] == pytest.approx(expected, abs=1e-5)


def _mirrored_2d() -> np.ndarray:
    labels = np.zeros((15, 20), dtype=np.int16)
    labels[3:9, 2:6] = 1
    labels[6:13, 8:10] = 2
    return labels + labels[:, ::-1]


def _mirrored_3d() -> np.ndarray:
    labels = np.zeros((11, 12, 9), dtype=np.int16)
    labels[1:4, 2:5, 1:3] = 1
    labels[5:7, 4:6, 3:5] = 3
    return labels + labels[::-1, ::-1, ::-1]


@pytest.mark.parametrize(
    ("labels", "spacing_mm", "flip_axes"),
    [
        (_mirrored_2d(), (1.0, 1.0), (1,)),
        (_mirrored_2d(), (0.6, 1.7), (1,)),
        (_mirrored_3d(), (0.8, 0.8, 2.0), (0, 1, 2)),
    ],
)
def test_symmetric_input_gives_symmetric_map(
    labels: np.ndarray, spacing_mm: tuple[float, ...], flip_axes: tuple[int, ...]
) -> None:
    np.testing.assert_array_equal(labels, np.flip(labels, axis=flip_axes))
    weights = border_weight_map(labels, spacing_mm=spacing_mm, sigma_voxels=3.0)
    assert weights.max() > 2.0  # the border term is present, so symmetry is not trivial
    np.testing.assert_allclose(weights, np.flip(weights, axis=flip_axes), atol=1e-5)


# 3D: one-voxel objects at (1, 1, 2) and (1, 1, 6), spacing (2, 1, 1) mm, sigma 5 * 1 = 5 mm.
#   (1, 1, 4): d1 = d2 = 2 mm:                1 + 10 * exp(-16 / 50) = 8.261490
#   (0, 1, 4): d1 = d2 = sqrt(2^2 + 2^2) mm:  1 + 10 * exp(-(2 * sqrt(8))^2 / 50)
#                                           = 1 + 10 * exp(-0.64) = 1 + 10 * 0.5272924 = 6.272924
@pytest.mark.parametrize(("position", "expected"), [((1, 1, 4), 8.261490), ((0, 1, 4), 6.272924)])
def test_3d_map_matches_hand_values(position: tuple[int, int, int], expected: float) -> None:
    labels = np.zeros((3, 3, 9), dtype=np.uint8)
    labels[1, 1, 2] = 1
    labels[1, 1, 6] = 1
    weights = border_weight_map(labels, spacing_mm=(2.0, 1.0, 1.0))
    assert weights.shape == labels.shape
    assert weights[position] == pytest.approx(expected, abs=1e-5)


# Dense maps put two structures near every voxel; sparse ones leave voxels with structures
# beyond the cutoff, where the bounded computation differs from the full one.
@pytest.mark.parametrize(
    ("shape", "foreground_fraction", "spacing_mm", "sigma_voxels", "on_foreground"),
    [
        ((64, 64), 0.25, (1.0, 1.0), 5.0, False),
        ((64, 64), 0.05, (1.0, 1.0), 5.0, False),
        ((64, 64), 0.25, (0.7, 1.3), 2.0, False),
        ((64, 64), 0.05, (0.7, 1.3), 2.0, True),
        ((24, 24, 20), 0.25, (0.8, 0.8, 2.0), 1.5, False),
        ((24, 24, 20), 0.05, (0.8, 0.8, 2.0), 1.5, True),
        ((24, 24, 20), 0.05, (1.0, 1.0, 1.0), 1.0, False),
    ],
)
def test_bounded_computation_equals_brute_force(
    shape: tuple[int, ...],
    foreground_fraction: float,
    spacing_mm: tuple[float, ...],
    sigma_voxels: float,
    on_foreground: bool,
) -> None:
    labels = _random_label_map(shape, foreground_fraction=foreground_fraction, seed=3)
    assert label_structures(labels)[1] >= 10
    weights = border_weight_map(
        labels,
        spacing_mm=spacing_mm,
        sigma_voxels=sigma_voxels,
        border_term_on_foreground=on_foreground,
    )
    expected = _brute_force_map(
        labels,
        spacing_mm=spacing_mm,
        w0=10.0,
        sigma_mm=sigma_voxels * min(spacing_mm),
        on_foreground=on_foreground,
    )
    np.testing.assert_allclose(weights, expected, atol=1e-5, rtol=1e-6)


def test_moderately_sized_volume_with_many_structures() -> None:
    rng = np.random.default_rng(7)
    labels = np.zeros((64, 64, 48), dtype=np.int16)
    for n, corner in enumerate(rng.integers(0, [60, 60, 44], size=(40, 3))):
        labels[tuple(slice(c, c + 4) for c in corner)] = 1 + n % 3
    weights = border_weight_map(labels, spacing_mm=(0.8, 0.8, 1.5))
    w_c = class_balance_map(labels)
    assert np.all(np.isfinite(weights))
    assert np.all(weights >= w_c)
    assert np.all(weights <= w_c + 10.0)
    assert np.any(weights[labels == 0] > 2.0)


@pytest.mark.parametrize(("max_structures", "raises"), [(1, True), (2, False), (None, False)])
def test_max_structures_limits_the_number_of_structures(
    max_structures: int | None, raises: bool
) -> None:
    if raises:
        with pytest.raises(BorderWeightError, match="2 structures, more than max_structures=1"):
            border_weight_map(STRIP, spacing_mm=(1.0, 1.0), max_structures=max_structures)
    else:
        border_weight_map(STRIP, spacing_mm=(1.0, 1.0), max_structures=max_structures)


@pytest.mark.parametrize(
    ("labels", "kwargs", "message"),
    [
        (STRIP, {"spacing_mm": (1.0,)}, "spacing_mm: need 2 values"),
        (STRIP, {"spacing_mm": (1.0, 0.0)}, "spacing_mm: need finite values > 0"),
        (STRIP, {"spacing_mm": (1.0, float("nan"))}, "spacing_mm: need finite values > 0"),
        (STRIP.astype(float), {"spacing_mm": (1.0, 1.0)}, "labels: need an integer"),
        (-STRIP, {"spacing_mm": (1.0, 1.0)}, "labels: negative label -1"),
        (np.zeros((0, 3), int), {"spacing_mm": (1.0, 1.0)}, "labels: need a non-empty array"),
        (STRIP, {"spacing_mm": (1.0, 1.0), "w0": -1.0}, "w0: must be finite and >= 0"),
        (STRIP, {"spacing_mm": (1.0, 1.0), "sigma_voxels": 0.0}, "sigma_voxels: must be"),
        (STRIP, {"spacing_mm": (1.0, 1.0), "sigma_mm": -2.0}, "sigma_mm: must be"),
    ],
)
def test_invalid_arguments_raise_naming_the_argument(
    labels: np.ndarray, kwargs: dict, message: str
) -> None:
    with pytest.raises(BorderWeightError, match=message):
        border_weight_map(labels, **kwargs)
