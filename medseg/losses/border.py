"""Cross-entropy weighted per voxel by U-Net border-weight maps (``border_ce`` in a loss spec)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from medseg.losses.base import SegmentationLoss, TermSpec, voxel_average


class BorderCESpec(TermSpec):
    """Options of :class:`BorderWeightedCELoss` (none besides the weight)."""


class BorderWeightedCELoss(SegmentationLoss):
    """Per-voxel weighted cross-entropy with U-Net border-weight maps: ``mean(w * ce)``.

    The mean runs over all voxels of the batch, not ``sum(w * ce) / sum(w)``: it is the U-Net
    energy (Ronneberger et al. 2015, eq. 1, a weighted sum) divided by the constant voxel count,
    so every voxel's gradient is proportional to its own weight, independent of how many border
    voxels share its batch, and the value equals plain cross-entropy when all weights are 1.
    Its scale is that of cross-entropy times the mean weight (class balancing and border peaks
    of ``1 + w0`` make it typically a few times larger). Ignored voxels are left out (the
    mean runs over the labelled voxels). The maps come from
    :mod:`medseg.preprocess.border_weights`.

    Example:
        >>> loss = BorderWeightedCELoss()
        >>> target = torch.zeros(1, 4, 4, dtype=torch.long)
        >>> value = loss(torch.zeros(1, 2, 4, 4), target, torch.full((1, 4, 4), 2.0))
        >>> round(value.item(), 4)  # 2 * ln 2
        1.3863

    Raises:
        LossInputError: (when called) if ``weights`` is None or its shape differs from target's.
    """

    config_name = "border_ce"
    Options = BorderCESpec
    needs_weights = True

    def _loss(
        self, logits: Tensor, target: Tensor, weights: Tensor | None, labelled: Tensor | None
    ) -> Tensor:
        assert weights is not None  # guaranteed by _validated_inputs since needs_weights is True
        return voxel_average(weights * F.cross_entropy(logits, target, reduction="none"), labelled)
