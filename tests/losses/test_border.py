"""Border-weighted cross-entropy: unit weights give cross-entropy, weights scale it."""

from __future__ import annotations

import pytest
import torch

from medseg.losses import (
    BorderWeightedCELoss,
    CrossEntropyLoss,
)
from tests.losses.helpers import SHAPES, _random_inputs


@pytest.mark.parametrize("shape", SHAPES)
def test_border_ce_with_unit_weights_equals_cross_entropy(shape: tuple[int, ...]) -> None:
    logits, target = _random_inputs(shape, seed=6)
    weights = torch.ones(target.shape)
    torch.testing.assert_close(
        BorderWeightedCELoss()(logits, target, weights),
        CrossEntropyLoss()(logits, target),
        rtol=0,
        atol=1e-6,
    )


def test_border_ce_scales_with_constant_weights() -> None:
    # mean(w * ce), not sum(w * ce) / sum(w): a constant weight 3 triples the loss.
    logits, target = _random_inputs((2, 3, 8, 7), seed=7)
    weighted = BorderWeightedCELoss()(logits, target, torch.full(target.shape, 3.0))
    torch.testing.assert_close(weighted, 3 * CrossEntropyLoss()(logits, target))
