"""Dice + cross-entropy: agreement with MONAI, perfect predictions."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
import torch.nn.functional as F

from medseg.losses import (
    DiceCELoss,
)
from tests.losses.helpers import SHAPES, SMOOTH, _random_inputs


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("batch_dice", [False, True])
def test_dice_term_matches_monai(
    monai_losses: ModuleType, shape: tuple[int, ...], include_background: bool, batch_dice: bool
) -> None:
    logits, target = _random_inputs(shape, seed=2, absent_class=True)
    monai_loss = monai_losses.DiceLoss(
        to_onehot_y=True,
        softmax=True,
        include_background=include_background,
        batch=batch_dice,
        smooth_nr=SMOOTH,
        smooth_dr=SMOOTH,
    )
    loss = DiceCELoss(include_background=include_background, batch_dice=batch_dice, ce_weight=0.0)
    torch.testing.assert_close(
        loss(logits, target), monai_loss(logits, target[:, None]), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_dice_ce_matches_monai_dice_ce(monai_losses: ModuleType, shape: tuple[int, ...]) -> None:
    logits, target = _random_inputs(shape, seed=3)
    monai_loss = monai_losses.DiceCELoss(
        to_onehot_y=True,
        softmax=True,
        include_background=False,
        smooth_nr=SMOOTH,
        smooth_dr=SMOOTH,
        lambda_dice=0.7,
        lambda_ce=1.3,
    )
    loss = DiceCELoss(dice_weight=0.7, ce_weight=1.3)
    torch.testing.assert_close(
        loss(logits, target), monai_loss(logits, target[:, None]), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("batch_dice", [False, True])
def test_perfect_prediction_gives_a_dice_term_near_0(
    include_background: bool, batch_dice: bool
) -> None:
    # Class 2 is absent from the target and gets ~0 probability: its Dice is s / (~0 + s) ~ 1.
    target = torch.tensor([[[0, 1, 1], [0, 0, 1]], [[1, 1, 1], [0, 0, 0]]])
    logits = 40.0 * F.one_hot(target, 3).movedim(-1, 1).float()
    loss = DiceCELoss(include_background=include_background, batch_dice=batch_dice, ce_weight=0.0)
    assert loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
