"""Weighted sums of losses, and which losses need weight maps."""

from __future__ import annotations

import pytest
import torch

from medseg.losses import (
    BorderWeightedCELoss,
    CombinedLoss,
    CrossEntropyLoss,
    DeepSupervisionLoss,
    DiceCELoss,
    FocalLoss,
    SegmentationLoss,
)
from tests.losses.helpers import _random_inputs


def test_combined_loss_is_the_weighted_sum_of_its_terms() -> None:
    logits, target = _random_inputs((2, 3, 8, 7), seed=8)
    weights = 1 + torch.rand(target.shape, generator=torch.Generator().manual_seed(0))
    terms = [(0.3, DiceCELoss(batch_dice=True)), (2.0, FocalLoss()), (0.5, BorderWeightedCELoss())]
    expected = sum(weight * loss(logits, target, weights) for weight, loss in terms)
    torch.testing.assert_close(CombinedLoss(terms)(logits, target, weights), expected)


@pytest.mark.parametrize(
    ("loss", "needs_weights"),
    [
        pytest.param(CrossEntropyLoss(), False, id="ce"),
        pytest.param(DiceCELoss(), False, id="dice-ce"),
        pytest.param(FocalLoss(), False, id="focal"),
        pytest.param(BorderWeightedCELoss(), True, id="border-ce"),
        pytest.param(CombinedLoss([(1.0, DiceCELoss()), (1.0, FocalLoss())]), False, id="combo"),
        pytest.param(
            CombinedLoss([(1.0, DiceCELoss()), (0.5, BorderWeightedCELoss())]), True, id="combo-w"
        ),
        pytest.param(DeepSupervisionLoss(BorderWeightedCELoss()), True, id="deep-supervision"),
    ],
)
def test_needs_weights_tells_whether_weight_maps_are_used(
    loss: SegmentationLoss, needs_weights: bool
) -> None:
    assert loss.needs_weights is needs_weights
