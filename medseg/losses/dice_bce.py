"""Soft Dice plus binary cross-entropy on sigmoid region outputs (``dice_bce`` in a loss spec):
the loss of region-based training (:mod:`medseg.regions`), as nnU-Net v2's ``DC_and_BCE_loss``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from medseg.losses.base import (
    SegmentationLoss,
    TermSpec,
    check_dice_options,
    labelled_only,
    soft_dice_loss,
    voxel_average,
)
from medseg.regions import Region, region_masks


class DiceBCESpec(TermSpec):
    """Options of :class:`DiceBCELoss`."""

    smooth: float = 1e-5
    batch_dice: bool = False
    dice_weight: float = 1.0
    bce_weight: float = 1.0


class DiceBCELoss(SegmentationLoss):
    """Soft Dice on sigmoid probabilities plus binary cross-entropy, one channel per region.

    ``dice_weight * (1 - mean_r Dice_r) + bce_weight * BCE``. The target is the label map; the
    region masks ``g_r`` (1 where the label is one of region ``r``'s values) are built here
    from the regions given by :meth:`~medseg.losses.base.SegmentationLoss.for_regions`.
    ``Dice_r = (2 * sum(p_r * g_r) + smooth) / (sum(p_r) + sum(g_r) + smooth)`` with
    ``p_r = sigmoid(logit_r)``, summed per sample (averaged over samples and regions) or, with
    ``batch_dice``, over the batch. BCE is ``binary_cross_entropy_with_logits`` averaged over
    every voxel and region. Ignored voxels are in none of the sums.

    Example:
        >>> loss = DiceBCELoss().for_regions([[1, 2], [2]])
        >>> value = loss(torch.randn(2, 2, 8, 8), torch.randint(0, 3, (2, 8, 8)))

    Args:
        smooth: added to numerator and denominator of every Dice (> 0).
        batch_dice: sum over the batch before the Dice ratio instead of per sample.
        dice_weight: weight of the Dice term (>= 0).
        bce_weight: weight of the binary cross-entropy term (>= 0).

    Raises:
        LossConfigError: on a non-positive ``smooth``, negative term weights or both 0.
    """

    config_name = "dice_bce"
    Options = DiceBCESpec
    region_based = True

    def __init__(
        self,
        *,
        smooth: float = 1e-5,
        batch_dice: bool = False,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
    ) -> None:
        super().__init__()
        check_dice_options(smooth, dice_weight=dice_weight, bce_weight=bce_weight)
        self.smooth = float(smooth)
        self.batch_dice = batch_dice
        self.dice_weight = float(dice_weight)
        self.bce_weight = float(bce_weight)

    def extra_repr(self) -> str:
        return (
            f"smooth={self.smooth}, batch_dice={self.batch_dice}, "
            f"dice_weight={self.dice_weight}, bce_weight={self.bce_weight}"
        )

    def _loss(
        self, logits: Tensor, target: Tensor, weights: Tensor | None, labelled: Tensor | None
    ) -> Tensor:
        assert self.regions is not None  # checked with the inputs
        masks = region_masks(target, [Region(name=str(r), labels=list(r)) for r in self.regions])
        total = logits.new_zeros(())
        if self.dice_weight:
            total = total + self.dice_weight * self._dice_loss(logits, masks, labelled)
        if self.bce_weight:
            bce = F.binary_cross_entropy_with_logits(logits, masks, reduction="none")
            voxel_mask = None if labelled is None else labelled.unsqueeze(1).expand_as(bce)
            total = total + self.bce_weight * voxel_average(bce, voxel_mask)
        return total

    def _dice_loss(self, logits: Tensor, masks: Tensor, labelled: Tensor | None) -> Tensor:
        probabilities = labelled_only(torch.sigmoid(logits), labelled)
        masks = labelled_only(masks, labelled)
        return soft_dice_loss(probabilities, masks, smooth=self.smooth, batch_dice=self.batch_dice)
