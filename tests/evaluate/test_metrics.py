"""Confusion-matrix Dice/IoU against hand counts and MONAI (random, phantom and, as a
reference, TotalSegmentator label maps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_iou
from monai.networks.utils import one_hot

from medseg.evaluate.metrics import (
    confusion_matrix,
    dice_from_confusion,
    iou_from_confusion,
    mean_foreground,
)
from medseg.io.nifti import read_nifti
from tests.phantoms import small_phantom


def test_hand_counted_example() -> None:
    reference = np.array([0, 0, 1, 1, 1, 2, 2, 0])
    prediction = np.array([0, 1, 1, 1, 0, 2, 0, 0])
    matrix = confusion_matrix(prediction, reference, 4)
    # label 1: TP 2, FP 1 (index 1), FN 1 (index 4) -> Dice 4/6, IoU 2/4
    # label 2: TP 1, FP 0, FN 1 -> Dice 2/3, IoU 1/2; label 3 absent everywhere -> NaN
    dice = dice_from_confusion(matrix)
    iou = iou_from_confusion(matrix)
    assert dice[1] == pytest.approx(4 / 6) and dice[2] == pytest.approx(2 / 3) and np.isnan(dice[3])
    assert iou[1] == pytest.approx(0.5) and iou[2] == pytest.approx(0.5) and np.isnan(iou[3])
    assert mean_foreground(dice) == pytest.approx((4 / 6 + 2 / 3) / 2)


def test_structure_missing_on_one_side_scores_zero() -> None:
    dice = dice_from_confusion(confusion_matrix(np.zeros(5), np.array([0, 0, 1, 1, 0]), 2))
    assert dice[1] == 0.0


@pytest.mark.parametrize("shape", [(12, 10), (9, 8, 7)])
def test_equal_to_monai_on_random_multi_label_maps(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 6, size=shape)
    prediction = np.where(rng.random(shape) < 0.7, reference, rng.integers(0, 6, size=shape))
    matrix = confusion_matrix(prediction, reference, 6)
    to_onehot = lambda a: one_hot(torch.from_numpy(a)[None, None], num_classes=6)  # noqa: E731
    monai_dice = compute_dice(to_onehot(prediction), to_onehot(reference), include_background=True)
    monai_iou = compute_iou(to_onehot(prediction), to_onehot(reference), include_background=True)
    assert np.allclose(dice_from_confusion(matrix), monai_dice.numpy()[0], atol=1e-6)
    assert np.allclose(iou_from_confusion(matrix), monai_iou.numpy()[0], atol=1e-6)


def _assert_equal_to_monai_with_every_structure_shifted(reference: np.ndarray) -> None:
    prediction = np.roll(reference, 1, axis=0)  # every structure shifted by one voxel
    classes = int(reference.max()) + 1
    matrix = confusion_matrix(prediction, reference, classes)
    to_onehot = lambda a: one_hot(torch.from_numpy(a)[None, None], num_classes=classes)  # noqa: E731
    monai_dice = compute_dice(to_onehot(prediction), to_onehot(reference), include_background=True)
    monai_iou = compute_iou(to_onehot(prediction), to_onehot(reference), include_background=True)
    present = np.unique(reference)
    dice = dice_from_confusion(matrix)[present]
    assert np.all((dice > 0.3) & (dice < 1.0))  # every structure overlaps itself partly
    assert np.allclose(dice, monai_dice.numpy()[0][present], atol=1e-6)
    assert np.allclose(
        iou_from_confusion(matrix)[present], monai_iou.numpy()[0][present], atol=1e-6
    )


def test_equal_to_monai_on_a_phantom_label_map() -> None:
    _, labels = small_phantom(1)
    assert np.array_equal(np.unique(labels.array), [0, 1, 2, 3, 4, 5])
    _assert_equal_to_monai_with_every_structure_shifted(labels.array.astype(np.int64))


# --- reference data (../shared/data) ---------------------------------------------------------


def test_equal_to_monai_on_real_multi_label_data(shared_data: Path) -> None:
    reference = read_nifti(
        shared_data / "totalsegmentator_ref/tests/reference_files/example_seg_fast.nii.gz"
    ).array.astype(np.int64)
    _assert_equal_to_monai_with_every_structure_shifted(reference)
