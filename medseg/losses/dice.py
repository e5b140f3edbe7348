"""Soft Dice plus cross-entropy (``dice_ce`` in a loss spec), per sample or over the batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from medseg.losses.base import (
    SegmentationLoss,
    TermSpec,
    check_dice_options,
    class_weight_tensor,
    class_weights_for,
    labelled_only,
    soft_dice_loss,
)
from medseg.losses.cross_entropy import cross_entropy


class DiceCESpec(TermSpec):
    """Options of :class:`DiceCELoss`."""

    include_background: bool = False
    smooth: float = 1e-5
    batch_dice: bool = False
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    class_weights: tuple[float, ...] | None = None


class DiceCELoss(SegmentationLoss):
    """Soft Dice on softmax probabilities plus cross-entropy.

    ``dice_weight * (1 - mean_c Dice_c) + ce_weight * CE``, where per class ``c``
    ``Dice_c = (2 * sum(p_c * g_c) + smooth) / (sum(p_c) + sum(g_c) + smooth)``, ``p_c`` the
    softmax probability and ``g_c`` the one-hot target. The smoothing term keeps empty classes
    finite: a class absent from target and prediction has Dice 1, a class absent from the target
    but given probability mass has Dice close to 0.

    Sums run over the spatial axes of each sample (``batch_dice=False``; Dice is then averaged
    over samples and classes) or over the batch and spatial axes together (``batch_dice=True``,
    as nnU-Net's 3d_fullres; Dice is averaged over classes only). Batch Dice treats the batch as
    one large image, so a patch without a small structure does not score that class 0 on its own.
    Ignored voxels are in none of the sums (a sample with every voxel ignored has Dice 1) nor in
    the cross-entropy average.

    Example:
        >>> loss = DiceCELoss(batch_dice=True)
        >>> logits = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
        >>> loss(logits, torch.randint(0, 3, (2, 8, 8, 8))).backward()

    Args:
        include_background: include class 0 in the Dice average.
        smooth: added to numerator and denominator of every Dice (> 0).
        batch_dice: sum over the batch before the Dice ratio instead of per sample.
        dice_weight: weight of the Dice term (>= 0).
        ce_weight: weight of the cross-entropy term (>= 0).
        class_weights: class weights of the cross-entropy term only (see
            :class:`~medseg.losses.cross_entropy.CrossEntropyLoss`); Dice classes are always
            averaged with equal weight.

    Raises:
        LossConfigError: on a non-positive ``smooth``, negative term weights, both term weights
            0, or invalid class weights.
    """

    config_name = "dice_ce"
    Options = DiceCESpec

    def __init__(
        self,
        *,
        include_background: bool = False,
        smooth: float = 1e-5,
        batch_dice: bool = False,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        check_dice_options(smooth, dice_weight=dice_weight, ce_weight=ce_weight)
        self.include_background = include_background
        self.smooth = float(smooth)
        self.batch_dice = batch_dice
        self.dice_weight = float(dice_weight)
        self.ce_weight = float(ce_weight)
        self.class_weights: Tensor | None
        self.register_buffer("class_weights", class_weight_tensor(class_weights), persistent=False)

    def extra_repr(self) -> str:
        return (
            f"include_background={self.include_background}, smooth={self.smooth}, "
            f"batch_dice={self.batch_dice}, dice_weight={self.dice_weight}, "
            f"ce_weight={self.ce_weight}"
        )

    def _loss(
        self, logits: Tensor, target: Tensor, weights: Tensor | None, labelled: Tensor | None
    ) -> Tensor:
        total = logits.new_zeros(())
        if self.dice_weight:
            total = total + self.dice_weight * self._dice_loss(logits, target, labelled)
        if self.ce_weight:
            ce = cross_entropy(
                logits, target, class_weights=class_weights_for(self, logits), labelled=labelled
            )
            total = total + self.ce_weight * ce
        return total

    def _dice_loss(self, logits: Tensor, target: Tensor, labelled: Tensor | None) -> Tensor:
        probabilities = labelled_only(torch.softmax(logits, dim=1), labelled)
        one_hot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probabilities.dtype)
        one_hot = labelled_only(one_hot, labelled)
        if not self.include_background:
            probabilities, one_hot = probabilities[:, 1:], one_hot[:, 1:]
        return soft_dice_loss(
            probabilities, one_hot, smooth=self.smooth, batch_dice=self.batch_dice
        )
