"""Cross-entropy: agreement with torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg.losses import (
    CrossEntropyLoss,
)
from tests.losses.helpers import SHAPES, _random_inputs


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("class_weights", [None, (0.2, 1.0, 3.0, 0.5)])
def test_cross_entropy_matches_torch(
    shape: tuple[int, ...], class_weights: tuple[float, ...] | None
) -> None:
    logits, target = _random_inputs(shape, seed=1)
    class_weights = None if class_weights is None else class_weights[: shape[1]]
    expected = F.cross_entropy(
        logits, target, weight=None if class_weights is None else torch.tensor(class_weights)
    )
    actual = CrossEntropyLoss(class_weights=class_weights)(logits, target)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)
