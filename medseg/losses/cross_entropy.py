"""Softmax cross-entropy, optionally class-weighted (``ce`` in a loss spec)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from medseg.losses.base import SegmentationLoss, TermSpec, class_weight_tensor, class_weights_for


class CESpec(TermSpec):
    """Options of :class:`CrossEntropyLoss`."""

    class_weights: tuple[float, ...] | None = None


class CrossEntropyLoss(SegmentationLoss):
    """Softmax cross-entropy averaged over voxels, like ``torch.nn.functional.cross_entropy``.

    With ``class_weights`` the average is weighted as in torch:
    ``sum(w[y] * ce) / sum(w[y])`` over voxels.

    Example:
        >>> loss = CrossEntropyLoss(class_weights=[1.0, 3.0])
        >>> value = loss(torch.zeros(1, 2, 4, 4), torch.ones(1, 4, 4, dtype=torch.long))
        >>> round(value.item(), 4)  # ln 2
        0.6931

    Args:
        class_weights: one non-negative weight per class, or None for equal weights.

    Raises:
        LossConfigError: on negative, non-finite or all-zero class weights.
    """

    config_name = "ce"
    Options = CESpec

    def __init__(self, class_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.class_weights: Tensor | None
        self.register_buffer("class_weights", class_weight_tensor(class_weights), persistent=False)

    def _loss(self, logits: Tensor, target: Tensor, weights: Tensor | None) -> Tensor:
        return F.cross_entropy(logits, target, weight=class_weights_for(self, logits))
