"""Multi-class focal loss on softmax (``focal`` in a loss spec)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from medseg.errors import LossConfigError
from medseg.losses.base import (
    SegmentationLoss,
    TermSpec,
    class_weight_tensor,
    class_weights_for,
    voxel_average,
    voxel_weights,
)

# Floor of (1 - p_t) in the focal term: keeps the gradient of (1 - p_t)^gamma finite for
# gamma < 1 where p_t rounds to 1 (those voxels contribute ~0 to the loss anyway).
_FOCAL_FLOOR = 1e-12


class FocalSpec(TermSpec):
    """Options of :class:`FocalLoss`."""

    gamma: float = 2.0
    class_weights: tuple[float, ...] | None = None


class FocalLoss(SegmentationLoss):
    """Multi-class focal loss on softmax: ``-(1 - p_t)^gamma * log(p_t)`` (Lin et al. 2017).

    ``p_t`` is the probability of the target class. ``class_weights`` play the role of the
    paper's alpha and are averaged like
    :class:`~medseg.losses.cross_entropy.CrossEntropyLoss` does (``sum(a[y] * fl) /
    sum(a[y])``), so ``gamma=0`` gives exactly the cross-entropy with the same class weights.
    Ignored voxels are left out of both sums.

    Example:
        >>> loss = FocalLoss(gamma=2.0)
        >>> value = loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
        >>> round(value.item(), 4)  # (1 - 1/2)^2 * ln 2
        0.1733

    Args:
        gamma: focusing parameter (>= 0); 0 is cross-entropy.
        class_weights: one non-negative weight (alpha) per class, or None.

    Raises:
        LossConfigError: on a negative or non-finite ``gamma`` or invalid class weights.
    """

    config_name = "focal"
    Options = FocalSpec

    def __init__(self, gamma: float = 2.0, class_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if not (math.isfinite(gamma) and gamma >= 0):
            raise LossConfigError(f"gamma: must be finite and >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.class_weights: Tensor | None
        self.register_buffer("class_weights", class_weight_tensor(class_weights), persistent=False)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"

    def _loss(
        self, logits: Tensor, target: Tensor, weights: Tensor | None, labelled: Tensor | None
    ) -> Tensor:
        log_p_t = F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
        focal = -log_p_t
        if self.gamma:
            # -expm1(log p) is 1 - p without cancellation when p is close to 1.
            focal = (-torch.expm1(log_p_t)).clamp_min(_FOCAL_FLOOR).pow(self.gamma) * focal
        alpha = class_weights_for(self, logits)
        return voxel_average(focal, voxel_weights(alpha, target, labelled))
