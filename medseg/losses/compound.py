"""A weighted sum of losses: what a loss spec with several terms builds."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from medseg.errors import LossConfigError
from medseg.losses.base import SegmentationLoss


class CombinedLoss(SegmentationLoss):
    """Weighted sum ``sum_i w_i * loss_i(logits, target, weights)`` of segmentation losses.

    Example:
        >>> loss = CombinedLoss([(1.0, DiceCELoss()), (0.5, BorderWeightedCELoss())])
        >>> loss.needs_weights
        True

    Args:
        terms: ``(weight, loss)`` pairs; weights finite and >= 0, at least one > 0.

    Raises:
        LossConfigError: on no terms or invalid weights.
        TypeError: if a term is not a :class:`SegmentationLoss`.
    """

    def __init__(self, terms: Sequence[tuple[float, SegmentationLoss]]) -> None:
        super().__init__()
        if not terms:
            raise LossConfigError("terms: need at least one (weight, loss) pair")
        for weight, loss in terms:
            if not isinstance(loss, SegmentationLoss):
                raise TypeError(f"terms: {type(loss).__name__} is not a SegmentationLoss")
            if not (math.isfinite(weight) and weight >= 0):
                raise LossConfigError(f"terms: weights must be finite and >= 0, got {weight}")
        if not any(weight > 0 for weight, _ in terms):
            raise LossConfigError("terms: at least one weight must be > 0")
        self.term_weights = tuple(float(weight) for weight, _ in terms)
        self.losses = nn.ModuleList(loss for _, loss in terms)

    @property
    def needs_weights(self) -> bool:  # type: ignore[override]
        """True when any term uses per-voxel weights."""
        return any(loss.needs_weights for loss in self.losses)

    def extra_repr(self) -> str:
        return f"term_weights={self.term_weights}"

    def forward(self, logits: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
        """Weighted sum of the terms; each term validates its inputs."""
        total: Tensor | None = None
        for weight, loss in zip(self.term_weights, self.losses, strict=True):
            if weight:
                term = weight * loss(logits, target, weights)
                total = term if total is None else total + term
        assert total is not None  # at least one weight is > 0
        return total
