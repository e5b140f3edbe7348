"""Every loss equals its value computed by hand on tiny inputs."""

from __future__ import annotations

import pytest
import torch

from medseg.losses import (
    BorderWeightedCELoss,
    CombinedLoss,
    CrossEntropyLoss,
    DiceCELoss,
    FocalLoss,
    SegmentationLoss,
)
from tests.losses.helpers import LN, _dice

# Two classes on a 2x2 image, pixels a b / c d. Logits (class 0, class 1) per pixel:
#   a (0, ln3) b (0, 0) / c (ln3, 0) d (0, ln3)  ->  p1 = 3/4 1/2 / 1/4 3/4  (p0 = 1 - p1)
# Target 1 0 / 0 0, so p(target) = 3/4 1/2 / 3/4 1/4 and the pixel CEs are
#   ln(4/3) ln2 / ln(4/3) ln4.
LOGITS_2 = torch.tensor([[[[0.0, 0.0], [LN(3), 0.0]], [[LN(3), 0.0], [0.0, LN(3)]]]])
TARGET_2 = torch.tensor([[[1, 0], [0, 0]]])
CE_2 = (LN(4 / 3) + LN(2) + LN(4 / 3) + LN(4)) / 4
# Class 1: g1 = 1 0 / 0 0, overlap 3/4, sum(p1) = 9/4, sum(g1) = 1.
# Class 0: p0 = 1/4 1/2 / 3/4 1/4, g0 = 0 1 / 1 1, overlap 1/2 + 3/4 + 1/4 = 3/2, sum(p0) = 7/4,
# sum(g0) = 3.
DICE_2_CLASS_1 = _dice(3 / 4, 9 / 4 + 1)  # ~ 1.5 / 3.25 = 6/13
DICE_2_CLASS_0 = _dice(3 / 2, 7 / 4 + 3)  # ~ 3 / 4.75 = 12/19

# Batch of two: sample 0 as above, sample 1 has uniform logits (p1 = 1/2 on 4 pixels, sum 2)
# and no class 1 in its target.
LOGITS_B2 = torch.cat([LOGITS_2, torch.zeros(1, 2, 2, 2)])
TARGET_B2 = torch.cat([TARGET_2, torch.zeros(1, 2, 2, dtype=torch.long)])

# Three classes, uniform logits: p = 1/3 everywhere, every pixel CE = ln3. Target 0 1 / 2 2:
# class 1: overlap 1/3, sum(p) 4/3, sum(g) 1; class 2: overlap 2/3, sum(p) 4/3, sum(g) 2.
LOGITS_3 = torch.zeros(1, 3, 2, 2)
TARGET_3 = torch.tensor([[[0, 1], [2, 2]]])

BORDER_WEIGHTS_2 = torch.tensor([[[2.0, 1.0], [1.0, 4.0]]])

HAND_CASES = [
    pytest.param(CrossEntropyLoss(), LOGITS_2, TARGET_2, None, CE_2, id="ce"),
    # torch's weighted mean: sum(w[y] * ce) / sum(w[y]) with w[y] = 3 1 / 1 1, sum 6.
    pytest.param(
        CrossEntropyLoss(class_weights=[1.0, 3.0]),
        LOGITS_2,
        TARGET_2,
        None,
        (3 * LN(4 / 3) + LN(2) + LN(4 / 3) + LN(4)) / 6,
        id="ce-class-weights",
    ),
    pytest.param(CrossEntropyLoss(), LOGITS_3, TARGET_3, None, LN(3), id="ce-3-classes"),
    # Dice over class 1 only (background excluded), plus CE.
    pytest.param(DiceCELoss(), LOGITS_2, TARGET_2, None, 1 - DICE_2_CLASS_1 + CE_2, id="dice-ce"),
    pytest.param(
        DiceCELoss(include_background=True),
        LOGITS_2,
        TARGET_2,
        None,
        1 - (DICE_2_CLASS_0 + DICE_2_CLASS_1) / 2 + CE_2,
        id="dice-ce-with-background",
    ),
    # 1 - (2/7 + 2/5) / 2 = 23/35 without smoothing.
    pytest.param(
        DiceCELoss(ce_weight=0.0),
        LOGITS_3,
        TARGET_3,
        None,
        1 - (_dice(1 / 3, 4 / 3 + 1) + _dice(2 / 3, 4 / 3 + 2)) / 2,
        id="dice-3-classes",
    ),
    # Per sample: sample 1 has Dice s / (2 + s) ~ 0 for the absent class 1; mean over samples.
    pytest.param(
        DiceCELoss(ce_weight=0.0),
        LOGITS_B2,
        TARGET_B2,
        None,
        1 - (DICE_2_CLASS_1 + _dice(0, 2)) / 2,
        id="dice-per-sample",
    ),
    # Batch dice: overlap 3/4, sum(p1) = 9/4 + 2, sum(g1) = 1 -> ~ 1.5 / 5.25 = 2/7.
    pytest.param(
        DiceCELoss(ce_weight=0.0, batch_dice=True),
        LOGITS_B2,
        TARGET_B2,
        None,
        1 - _dice(3 / 4, 9 / 4 + 2 + 1),
        id="dice-batch",
    ),
    pytest.param(
        DiceCELoss(dice_weight=0.5, ce_weight=2.0),
        LOGITS_2,
        TARGET_2,
        None,
        0.5 * (1 - DICE_2_CLASS_1) + 2.0 * CE_2,
        id="dice-ce-term-weights",
    ),
    # (1 - p_t)^2 * ce per pixel: (1/4)^2 ln(4/3), (1/2)^2 ln2, (1/4)^2 ln(4/3), (3/4)^2 ln4.
    pytest.param(
        FocalLoss(gamma=2.0),
        LOGITS_2,
        TARGET_2,
        None,
        (LN(4 / 3) / 16 + LN(2) / 4 + LN(4 / 3) / 16 + 9 * LN(4) / 16) / 4,
        id="focal",
    ),
    # Same terms weighted by alpha[y] = 3 1 / 1 1, divided by sum(alpha[y]) = 6.
    pytest.param(
        FocalLoss(gamma=2.0, class_weights=[1.0, 3.0]),
        LOGITS_2,
        TARGET_2,
        None,
        (3 * LN(4 / 3) / 16 + LN(2) / 4 + LN(4 / 3) / 16 + 9 * LN(4) / 16) / 6,
        id="focal-class-weights",
    ),
    # mean(w * ce) with w = 2 1 / 1 4.
    pytest.param(
        BorderWeightedCELoss(),
        LOGITS_2,
        TARGET_2,
        BORDER_WEIGHTS_2,
        (2 * LN(4 / 3) + LN(2) + LN(4 / 3) + 4 * LN(4)) / 4,
        id="border-ce",
    ),
    pytest.param(
        CombinedLoss([(1.0, CrossEntropyLoss()), (0.5, BorderWeightedCELoss())]),
        LOGITS_2,
        TARGET_2,
        BORDER_WEIGHTS_2,
        CE_2 + 0.5 * (2 * LN(4 / 3) + LN(2) + LN(4 / 3) + 4 * LN(4)) / 4,
        id="combined",
    ),
]


@pytest.mark.parametrize(("loss", "logits", "target", "weights", "expected"), HAND_CASES)
def test_loss_equals_the_hand_computed_value(
    loss: SegmentationLoss,
    logits: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None,
    expected: float,
) -> None:
    assert loss(logits, target, weights).item() == pytest.approx(expected, abs=1e-6)
