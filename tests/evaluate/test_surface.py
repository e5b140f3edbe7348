"""Surface metrics: hand-checked shapes, empty structures, and equality with MONAI.

MONAI equality on phantom label maps, and on TotalSegmentator's example from ../shared/data
(a reference case).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_hausdorff_distance,
    compute_surface_dice,
)
from scipy import ndimage

from medseg.errors import GeometryMismatchError, MetricOptionError
from medseg.evaluate.surface import SurfaceMetrics, _percentile_as_torch, surface_metrics
from medseg.io.nifti import read_nifti
from tests.phantoms import small_phantom

SEGMENTATION = "totalsegmentator_ref/tests/reference_files/example_seg_fast.nii.gz"


def _cube(shape: tuple[int, ...], start: tuple[int, ...], size: int, label: int = 1) -> np.ndarray:
    volume = np.zeros(shape, np.uint8)
    volume[tuple(slice(s, s + size) for s in start)] = label
    return volume


# A 4x4 square and the same square one row lower, spacing 2 mm across rows, 0.5 mm across
# columns. Prediction -> reference distances, per surface pixel of the prediction: 6 pixels on
# the shared sides at 0, 2 pixels of its top row at 0.5 (nearest reference side pixel along the
# row), its 4 bottom-row pixels at 2.0; the reverse direction mirrors it. So HD95 = 2.0 (top 4
# of 12 distances), ASSD = (2 * 0.5 + 4 * 2) / 12 = 0.75, NSD at 1 mm = 8 / 12.
SQUARE = _cube((10, 10), (2, 2), 4)
SQUARE_ONE_ROW_LOWER = _cube((10, 10), (3, 2), 4)

HAND_CHECKED = [
    (
        "2d_square_one_row_lower",
        SQUARE_ONE_ROW_LOWER,
        SQUARE,
        (2.0, 0.5),
        1.0,
        SurfaceMetrics(hd95=2.0, nsd=8 / 12, assd=0.75),
    ),
    ("2d_identical", SQUARE, SQUARE, (2.0, 0.5), 0.0, SurfaceMetrics(hd95=0.0, nsd=1.0, assd=0.0)),
    (
        "2d_isotropic_one_row_lower_tolerance_below_shift",
        SQUARE_ONE_ROW_LOWER,
        SQUARE,
        (1.0, 1.0),
        0.5,
        SurfaceMetrics(hd95=1.0, nsd=0.5, assd=0.5),
    ),
]


@pytest.mark.parametrize(
    ("prediction", "reference", "spacing", "tolerance", "expected"),
    [case[1:] for case in HAND_CHECKED],
    ids=[case[0] for case in HAND_CHECKED],
)
def test_hand_checked_2d_values(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: tuple[float, float],
    tolerance: float,
    expected: SurfaceMetrics,
) -> None:
    result = surface_metrics(
        prediction, reference, spacing_mm=spacing, labels=[1], tolerance_mm=tolerance
    )[1]
    assert result.hd95 == pytest.approx(expected.hd95, abs=1e-6)
    assert result.nsd == pytest.approx(expected.nsd, abs=1e-9)
    assert result.assd == pytest.approx(expected.assd, abs=1e-6)


# A 6x6x6 cube shifted by k voxels along one axis: the k outermost faces (36 of the 152 surface
# voxels, more than 5 %) are k * spacing from the other cube, nothing is farther, so HD95 is
# exactly k * spacing[axis].
@pytest.mark.parametrize(
    ("axis", "shift", "spacing", "expected_mm"),
    [
        (0, 1, (0.5, 2.0, 3.0), 0.5),
        (1, 2, (0.5, 2.0, 3.0), 4.0),
        (2, 3, (0.5, 2.0, 3.0), 9.0),
        (0, 3, (0.8, 0.8, 2.5), 2.4),
    ],
)
def test_cube_shifted_by_k_voxels_has_hd95_k_times_spacing(
    axis: int, shift: int, spacing: tuple[float, float, float], expected_mm: float
) -> None:
    reference = _cube((16, 16, 16), (4, 4, 4), 6, label=3)
    start = [4, 4, 4]
    start[axis] += shift
    prediction = _cube((16, 16, 16), tuple(start), 6, label=3)
    result = surface_metrics(prediction, reference, spacing_mm=spacing, labels=[3])[3]
    assert result.hd95 == pytest.approx(expected_mm, rel=1e-6)


def test_nsd_is_one_when_tolerance_covers_the_shift() -> None:
    reference = _cube((16, 16, 16), (4, 4, 4), 6)
    prediction = _cube((16, 16, 16), (4, 6, 4), 6)
    result = surface_metrics(
        prediction, reference, spacing_mm=(0.5, 2.0, 3.0), labels=[1], tolerance_mm=4.0
    )[1]
    assert result.nsd == 1.0


EMPTY_CASES = [
    ("absent_from_both", np.zeros((8, 8, 8), np.uint8), np.zeros((8, 8, 8), np.uint8), None),
    (
        "absent_from_prediction",
        np.zeros((8, 8, 8), np.uint8),
        _cube((8, 8, 8), (2, 2, 2), 3),
        SurfaceMetrics(hd95=math.inf, nsd=0.0, assd=math.inf),
    ),
    (
        "absent_from_reference",
        _cube((8, 8, 8), (2, 2, 2), 3),
        np.zeros((8, 8, 8), np.uint8),
        SurfaceMetrics(hd95=math.inf, nsd=0.0, assd=math.inf),
    ),
]


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [case[1:] for case in EMPTY_CASES],
    ids=[case[0] for case in EMPTY_CASES],
)
def test_empty_structure_rule(
    prediction: np.ndarray, reference: np.ndarray, expected: SurfaceMetrics | None
) -> None:
    result = surface_metrics(prediction, reference, spacing_mm=(1.0, 1.0, 1.0), labels=[1])[1]
    if expected is None:
        assert math.isnan(result.hd95) and math.isnan(result.nsd) and math.isnan(result.assd)
    else:
        assert result == expected


def test_label_not_in_either_map_is_nan_next_to_present_ones() -> None:
    volume = _cube((8, 8), (2, 2), 3, label=2)
    result = surface_metrics(volume, volume, spacing_mm=(1.0, 1.0), labels=[2, 7])
    assert result[2] == SurfaceMetrics(hd95=0.0, nsd=1.0, assd=0.0)
    assert math.isnan(result[7].hd95)


@pytest.mark.parametrize(
    ("prediction_shape", "spacing", "tolerance", "message"),
    [
        ((8, 9), (1.0, 1.0), 1.0, "shape"),
        ((8, 8), (1.0, 1.0, 1.0), 1.0, "spacing_mm"),
        ((8, 8), (1.0, 0.0), 1.0, "spacing_mm"),
        ((8, 8), (1.0, 1.0), -1.0, "tolerance_mm"),
    ],
)
def test_invalid_arguments_are_rejected(
    prediction_shape: tuple[int, int], spacing: tuple[float, ...], tolerance: float, message: str
) -> None:
    expected = GeometryMismatchError if message == "shape" else MetricOptionError
    with pytest.raises(expected, match=message):
        surface_metrics(
            np.zeros(prediction_shape, np.uint8),
            np.zeros((8, 8), np.uint8),
            spacing_mm=spacing,
            labels=[1],
            tolerance_mm=tolerance,
        )


def test_percentile_equals_torch_quantile_bit_for_bit() -> None:
    rng = np.random.default_rng(7)
    for _ in range(500):
        size = int(rng.integers(1, 2000))
        values = (rng.random(size) * rng.choice([1.0, 30.0, 300.0])).astype(np.float32)
        expected = torch.quantile(torch.from_numpy(values), 0.95).item()
        assert _percentile_as_torch(values, 95.0) == expected


def _monai(
    prediction: np.ndarray,
    reference: np.ndarray,
    labels: list[int],
    spacing: tuple[float, ...],
    tolerance: float,
    metrics: tuple[str, ...],
) -> dict[str, np.ndarray]:
    """MONAI's values per label, on one-hot tensors with one channel per label."""
    channels = [torch.from_numpy(prediction == label) for label in labels]
    one_hot_prediction = torch.stack(channels)[None].float()
    channels = [torch.from_numpy(reference == label) for label in labels]
    one_hot_reference = torch.stack(channels)[None].float()
    common = {"include_background": True, "spacing": list(spacing)}
    values = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about every empty structure
        if "hd95" in metrics:
            values["hd95"] = compute_hausdorff_distance(
                one_hot_prediction, one_hot_reference, percentile=95, **common
            )
        if "nsd" in metrics:
            values["nsd"] = compute_surface_dice(
                one_hot_prediction, one_hot_reference, [tolerance] * len(labels), **common
            )
        if "assd" in metrics:
            values["assd"] = compute_average_surface_distance(
                one_hot_prediction, one_hot_reference, symmetric=True, **common
            )
    return {name: value[0].numpy().astype(np.float64) for name, value in values.items()}


def _assert_equal_to_monai(
    ours: dict[int, SurfaceMetrics], monai: dict[str, np.ndarray], labels: list[int]
) -> None:
    for name, expected in monai.items():
        actual = np.array([getattr(ours[label], name) for label in labels])
        if name == "hd95":
            # Absent from one side: MONAI's torch.quantile of infinite distances gives NaN.
            one_sided = np.isinf(actual)
            assert np.all(np.isnan(expected[one_sided]))
            actual, expected = actual[~one_sided], expected[~one_sided]
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6, err_msg=name)


def _two_phantoms() -> tuple[np.ndarray, tuple[float, ...]]:
    """Phantoms 1 and 2 side by side (98 x 39 x 33 voxels at 3 x 3 x 4 mm): ten structures,
    the second phantom's as 6 to 10."""
    first, second = small_phantom(1)[1], small_phantom(2)[1]
    shifted = np.where(second.array > 0, second.array.astype(np.int64) + 5, 0)
    return np.concatenate([first.array, shifted], axis=0), first.spacing_mm


def _reference_labels(request: pytest.FixtureRequest) -> tuple[np.ndarray, tuple[float, ...]]:
    """TotalSegmentator's 40-structure example (needs ../shared/data)."""
    volume = read_nifti(request.getfixturevalue("shared_data") / SEGMENTATION)
    return volume.array, volume.spacing_mm


@pytest.fixture(scope="module", params=["phantoms", "totalsegmentator"])
def perturbed_segmentation(
    request: pytest.FixtureRequest,
) -> tuple[np.ndarray, np.ndarray, tuple, list[int]]:
    """A multi-structure label map and a copy with per-structure perturbations.

    Structures in turn: shifted one voxel along axis 0, 1 or 2, surface layer removed,
    dilated into the background, left as is; the last structure is removed altogether.
    """
    array, spacing = _two_phantoms() if request.param == "phantoms" else _reference_labels(request)
    reference = array.astype(np.int64)
    labels = [int(label) for label in np.unique(reference) if label > 0]
    assert len(labels) >= 7  # every perturbation, and the removal
    prediction = reference.copy()
    for index, label in enumerate(labels):
        mask = reference == label
        kind = index % 6
        if kind < 3:
            prediction[mask & (prediction == label)] = 0
            prediction[np.roll(mask, 1, axis=kind)] = label
        elif kind == 3:
            prediction[mask & ~ndimage.binary_erosion(mask)] = 0
        elif kind == 4:
            prediction[ndimage.binary_dilation(mask) & (prediction == 0)] = label
    prediction[prediction == labels[-1]] = 0
    return prediction, reference, spacing, labels


@pytest.mark.parametrize("metric", ["hd95", "nsd", "assd"])
def test_equal_to_monai_on_perturbed_multi_structure_maps(
    perturbed_segmentation: tuple[np.ndarray, np.ndarray, tuple, list[int]], metric: str
) -> None:
    prediction, reference, spacing, labels = perturbed_segmentation
    ours = surface_metrics(
        prediction, reference, spacing_mm=spacing, labels=labels, tolerance_mm=3.0
    )
    monai = _monai(prediction, reference, labels, spacing, 3.0, (metric,))
    _assert_equal_to_monai(ours, monai, labels)


def test_equal_to_monai_with_anisotropic_spacing(
    perturbed_segmentation: tuple[np.ndarray, np.ndarray, tuple, list[int]],
) -> None:
    prediction, reference, _, labels = perturbed_segmentation
    labels = labels[:12] + labels[-1:]
    spacing = (0.8, 1.3, 2.5)
    ours = surface_metrics(
        prediction, reference, spacing_mm=spacing, labels=labels, tolerance_mm=2.0
    )
    _assert_equal_to_monai(
        ours, _monai(prediction, reference, labels, spacing, 2.0, ("hd95", "nsd")), labels
    )


# (0.05, 3.0) caps the neighbour search at 8 voxels along the first axis, so most distances
# come from the k-d tree fallback.
@pytest.mark.parametrize("spacing", [(0.7, 1.9), (0.05, 3.0)])
def test_equal_to_monai_in_2d_with_structures_on_the_image_border(
    spacing: tuple[float, float],
) -> None:
    rng = np.random.default_rng(3)
    seeds = rng.integers(0, 6, size=(12, 10))  # label 0 included as a structure
    reference = np.kron(seeds, np.ones((4, 5), np.int64))  # 48 x 50, blocks touch every border
    prediction = reference.copy()
    flip = rng.random(reference.shape) < 0.05
    prediction[flip] = rng.integers(0, 7, size=int(flip.sum()))  # label 6: prediction only
    labels = [0, 1, 2, 3, 4, 5, 6]
    ours = surface_metrics(
        prediction, reference, spacing_mm=spacing, labels=labels, tolerance_mm=1.5
    )
    monai = _monai(prediction, reference, labels, spacing, 1.5, ("hd95", "nsd", "assd"))
    _assert_equal_to_monai(ours, monai, labels)
