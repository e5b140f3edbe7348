"""Softmax cross-entropy, optionally class-weighted (``ce`` in a loss spec)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from medseg.losses.base import (
    SegmentationLoss,
    TermSpec,
    class_weight_tensor,
    class_weights_for,
    voxel_average,
    voxel_weights,
)


class CESpec(TermSpec):
    """Options of :class:`CrossEntropyLoss`."""

    class_weights: tuple[float, ...] | None = None


class CrossEntropyLoss(SegmentationLoss):
    """Softmax cross-entropy averaged over voxels, like ``torch.nn.functional.cross_entropy``.

    With ``class_weights`` the average is weighted as in torch:
    ``sum(w[y] * ce) / sum(w[y])`` over voxels. Ignored voxels (see
    :meth:`~medseg.losses.base.SegmentationLoss.ignoring`) are left out of both sums.

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

    def _loss(
        self, logits: Tensor, target: Tensor, weights: Tensor | None, labelled: Tensor | None
    ) -> Tensor:
        return cross_entropy(
            logits, target, class_weights=class_weights_for(self, logits), labelled=labelled
        )


def cross_entropy(
    logits: Tensor, target: Tensor, *, class_weights: Tensor | None, labelled: Tensor | None
) -> Tensor:
    """Cross-entropy averaged over the labelled voxels, class-weighted as in torch; 0 when no
    voxel is labelled."""
    if labelled is None:
        return F.cross_entropy(logits, target, weight=class_weights)
    voxelwise = F.cross_entropy(logits, target, reduction="none")
    return voxel_average(voxelwise, voxel_weights(class_weights, target, labelled))
