"""The argmax back on the scan resamples a class only where it can win, with the same labels
as resampling every class everywhere; and the resampling of a part equals that part of the
whole."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg.preprocess.case import (
    CaseProperties,
    _where_it_can_win,
    restore_argmax,
    where_classes_can_win,
)
from medseg.preprocess.resample import (
    linear_output_range,
    resample_image,
    resample_linear_part,
)


@pytest.mark.parametrize("new_shape", [(51, 60, 40), (13, 31, 30), (27, 31, 19)])
def test_a_resampled_part_equals_that_part_of_the_whole(new_shape: tuple[int, ...]) -> None:
    array = np.random.default_rng(0).random((27, 31, 19), dtype=np.float32)
    whole = resample_image(array, new_shape)
    box = [(3, min(20, new_shape[0])), (0, new_shape[1]), (5, new_shape[2] - 1)]
    part = resample_linear_part(array, new_shape, box)
    np.testing.assert_allclose(part, whole[tuple(slice(a, b) for a, b in box)], atol=3e-6)
    # changing input voxels 10-13 of axis 0 changes exactly the outputs the range names
    changed = array.copy()
    changed[10:14] += 1
    moved = np.flatnonzero(np.any(resample_image(changed, new_shape) != whole, axis=(1, 2)))
    first, last = linear_output_range(27, new_shape[0], 10, 14)
    assert first <= moved[0] and moved[-1] < last and last - first <= len(moved) + 1


def _properties(grid: tuple[int, ...], scan: tuple[int, ...]) -> CaseProperties:
    eye = np.eye(4).tolist()
    return CaseProperties(
        case_id="case",
        original_shape=list(scan),
        original_affine=eye,
        ras_shape=list(scan),
        ras_affine=eye,
        crop_box=[[0, n] for n in scan],
        resampled_shape=list(grid),
        resampled_affine=eye,
        spacing=[1.0, 1.0, 1.0],
    )


GRID, SCAN, CLASSES = (40, 36, 30), (75, 64, 61), 24


def _blob_probabilities() -> np.ndarray:
    """Softmax ``(CLASSES, *GRID)`` of a blob per structure, a confident background elsewhere
    and some noise."""
    rng = np.random.default_rng(4)
    logits = np.zeros((CLASSES, *GRID), np.float32)
    for index in range(1, CLASSES):
        centre = [rng.integers(4, n - 4) for n in GRID]
        logits[index][tuple(centre)] = 1.0
        logits[index] = 2000 * ndimage.gaussian_filter(logits[index], 2.0)
    logits[0] = 5.0
    logits += rng.normal(0, 0.3, logits.shape).astype(np.float32)
    return np.exp(logits) / np.exp(logits).sum(axis=0)


def test_the_argmax_of_many_small_structures_is_that_of_every_class_resampled() -> None:
    grid, scan, classes = GRID, SCAN, CLASSES
    probabilities = _blob_probabilities()
    restored = restore_argmax(probabilities, _properties(grid, scan)).array
    everywhere = np.stack([resample_image(p, scan) for p in probabilities]).argmax(axis=0)
    assert restored.shape == scan
    assert np.mean(restored == everywhere) > 0.99999
    assert len(np.unique(restored)) > classes // 2  # the structures are there
    # most structures are resampled over a small part of the scan only
    parts = [_where_it_can_win(p, scan, classes) for p in probabilities[1:]]
    sizes = [np.prod([b - a for a, b in part]) for part in parts if part is not None]
    assert np.median(sizes) < 0.2 * np.prod(scan)
    assert _where_it_can_win(np.full(grid, 0.5 / classes, np.float32), scan, classes) is None


def test_selected_classes_are_restored_voxel_for_voxel_in_a_small_part_of_the_scan() -> None:
    probabilities, properties = _blob_probabilities(), _properties(GRID, SCAN)
    everything = restore_argmax(probabilities, properties).array
    selected = [3, 7]
    only = restore_argmax(probabilities, properties, classes=selected).array
    assert set(np.unique(only)) == {0, *selected}
    np.testing.assert_array_equal(only, np.where(np.isin(everything, selected), everything, 0))
    assert int((only == 3).sum()) > 50 and int((only == 7).sum()) > 50
    box = where_classes_can_win(probabilities, properties, selected)
    assert box is not None
    restored_voxels = np.prod([last - first for first, last in box])
    assert restored_voxels < 0.25 * np.prod(SCAN)  # two blobs' box, not the whole scan
    # the box holds every voxel of the selected classes
    inside = np.zeros(SCAN, bool)
    inside[tuple(slice(first, last) for first, last in box)] = True
    assert not np.any(np.isin(everything, selected) & ~inside)


def test_classes_that_can_win_nowhere_give_an_empty_map() -> None:
    probabilities = np.zeros((3, *GRID), np.float32)
    probabilities[0], probabilities[1] = 0.7, 0.3  # class 2 never reaches 1/3
    properties = _properties(GRID, SCAN)
    assert where_classes_can_win(probabilities, properties, [2]) is None
    assert not restore_argmax(probabilities, properties, classes=[2]).array.any()
    with pytest.raises(ValueError, match="every class, or of none"):
        restore_argmax(probabilities, properties, classes=[1], keep=[])
