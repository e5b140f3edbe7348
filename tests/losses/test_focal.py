"""Focal loss: gamma 0 is cross-entropy, and agreement with its definition."""

from __future__ import annotations

import pytest
import torch

from medseg.losses import (
    CrossEntropyLoss,
    FocalLoss,
)
from tests.losses.helpers import SHAPES, _random_inputs


@pytest.mark.parametrize("class_weights", [None, (1.0, 2.0, 0.5, 4.0)])
def test_focal_with_gamma_0_equals_cross_entropy(class_weights: tuple[float, ...] | None) -> None:
    logits, target = _random_inputs((2, 4, 6, 5, 4), seed=4)
    focal = FocalLoss(gamma=0.0, class_weights=class_weights)(logits, target)
    ce = CrossEntropyLoss(class_weights=class_weights)(logits, target)
    torch.testing.assert_close(focal, ce, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("gamma", "class_weights"),
    [(2.0, None), (0.5, (0.2, 1.0, 3.0, 0.5)), (3.0, (1.0, 1.0, 2.0, 1.0))],
)
def test_focal_loss_matches_its_definition(
    shape: tuple[int, ...], gamma: float, class_weights: tuple[float, ...] | None
) -> None:
    # -(1 - p_t)^gamma ln p_t per voxel, averaged with the weights alpha[y] (Lin et al. 2017),
    # in float64; below the cross-entropy, which is gamma 0
    logits, target = _random_inputs(shape, seed=5)
    class_weights = None if class_weights is None else class_weights[: shape[1]]
    log_p_t = torch.log_softmax(logits.double(), 1).gather(1, target[:, None])[:, 0]
    focal = -((1 - log_p_t.exp()) ** gamma) * log_p_t
    alpha = torch.tensor(class_weights or [1.0] * shape[1], dtype=torch.float64)[target]
    expected = (alpha * focal).sum() / alpha.sum()
    actual = FocalLoss(gamma=gamma, class_weights=class_weights)(logits, target)
    assert actual.item() == pytest.approx(expected.item(), rel=1e-5)
    assert actual < CrossEntropyLoss(class_weights=class_weights)(logits, target)
