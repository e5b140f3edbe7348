"""dice_bce: soft Dice + BCE on sigmoid region outputs, the target a label map."""

from __future__ import annotations

import math

import pytest
import torch

from medseg.errors import LossConfigError, LossInputError
from medseg.losses import DeepSupervisionLoss, DiceBCELoss, build_loss

SMOOTH = 1e-5
NESTED = [[1, 2], [2]]


def test_one_region_value_matches_the_hand_computed_bce_plus_dice() -> None:
    # sigmoid(0) = 0.5, sigmoid(ln 3) = 0.75; the region mask of labels [0, 1] is [0, 1]
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    value = DiceBCELoss().for_regions([[1]])(logits, torch.tensor([[0, 1]]))
    bce = (math.log(2.0) + math.log(4.0 / 3.0)) / 2
    dice = (2 * 0.75 + SMOOTH) / (0.5 + 0.75 + 1.0 + SMOOTH)
    assert value.item() == pytest.approx(bce + 1 - dice, abs=1e-6)
    assert value.item() == pytest.approx(0.823747, abs=1e-6)


def test_overlapping_regions_take_their_masks_from_the_label_map() -> None:
    # labels [0, 1, 2]: region {1, 2} is [0, 1, 1], region {2} is [0, 0, 1]; every p = 0.5
    value = DiceBCELoss().for_regions(NESTED)(torch.zeros(1, 2, 3), torch.tensor([[0, 1, 2]]))
    dice_outer = (2 * 1.0 + SMOOTH) / (1.5 + 2 + SMOOTH)
    dice_inner = (2 * 0.5 + SMOOTH) / (1.5 + 1 + SMOOTH)
    expected = math.log(2.0) + 1 - (dice_outer + dice_inner) / 2
    assert value.item() == pytest.approx(expected, abs=1e-6)
    assert value.item() == pytest.approx(1.207431, abs=1e-6)


def test_ignored_voxels_count_in_no_sum_and_get_no_gradient() -> None:
    logits = torch.tensor([[[0.0, math.log(3.0), 5.0]]], requires_grad=True)
    loss = DiceBCELoss().for_regions([[1]]).ignoring(9)
    value = loss(logits, torch.tensor([[0, 1, 9]]))
    assert value.item() == pytest.approx(0.823747, abs=1e-6)  # as without the third voxel
    value.backward()
    assert logits.grad is not None and logits.grad[0, 0, 2].item() == 0.0


def test_batch_dice_and_deep_supervision_take_region_losses_like_any_other() -> None:
    target = torch.tensor([[[0, 1], [2, 2]]])
    outputs = [torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 1, 1)]
    loss = DeepSupervisionLoss(build_loss({"dice_bce": {"batch_dice": True}}))
    value = loss.for_regions(NESTED)(outputs, target)
    # full resolution: masks [0,1,1,1] and [0,0,1,1]; the 1x1 output sees label 2 (nearest):
    # both masks [1]
    full = (
        math.log(2.0)
        + 1
        - ((2 * 1.5 + SMOOTH) / (2 + 3 + SMOOTH) + (2 * 1.0 + SMOOTH) / (2 + 2 + SMOOTH)) / 2
    )
    low = math.log(2.0) + 1 - (2 * 0.5 + SMOOTH) / (0.5 + 1 + SMOOTH)
    assert value.item() == pytest.approx(2 / 3 * full + 1 / 3 * low, abs=1e-6)


def test_softmax_losses_and_region_losses_are_refused_on_the_wrong_plan() -> None:
    with pytest.raises(LossConfigError, match="loss dice_ce: trains softmax classes, but the plan"):
        build_loss({"dice_ce": 1.0, "dice_bce": 1.0}).for_regions(NESTED)
    with pytest.raises(LossConfigError, match=r"loss dice_bce: trains regions .* has no regions"):
        build_loss("dice_bce").for_regions(None)
    with pytest.raises(LossInputError, match="logits have 3 channels; a region loss needs one"):
        DiceBCELoss().for_regions(NESTED)(torch.zeros(1, 3, 3), torch.tensor([[0, 1, 2]]))
    with pytest.raises(LossInputError, match=r"target values must lie in 0..2"):
        DiceBCELoss().for_regions(NESTED)(torch.zeros(1, 2, 3), torch.tensor([[0, 1, 5]]))
