"""Deep supervision: one loss applied to outputs at several resolutions, weighted by scale."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from medseg.errors import LossConfigError, LossInputError
from medseg.losses.base import SegmentationLoss, without_channel


def deep_supervision_weights(n_outputs: int, *, drop_lowest: bool = False) -> tuple[float, ...]:
    """Weights ``1, 1/2, 1/4, ...`` for outputs from full to lowest resolution, summing to 1.

    ``drop_lowest=True`` gives the lowest resolution weight 0 before normalizing, as nnU-Net v2
    does. It is off by default: a network that should not be supervised at a resolution should
    not emit that output, and with two outputs dropping the lowest turns deep supervision off.

    Raises:
        LossConfigError: if ``n_outputs < 1``, or ``< 2`` with ``drop_lowest``.
    """
    if n_outputs < 1 + int(drop_lowest):
        raise LossConfigError(
            f"n_outputs: need at least {1 + int(drop_lowest)} outputs"
            f"{' with drop_lowest' if drop_lowest else ''}, got {n_outputs}"
        )
    raw = [0.5**level for level in range(n_outputs)]
    if drop_lowest:
        raw[-1] = 0.0
    return tuple(weight / sum(raw) for weight in raw)


class DeepSupervisionLoss(SegmentationLoss):
    """Applies a loss to network outputs at several resolutions against a full-resolution target.

    Each output ``(B, K, *spatial_i)`` is compared with the target resized to ``spatial_i`` by
    nearest-neighbour sampling at voxel centres (``nearest-exact``: for a factor 2 the second
    voxel of each pair, for a factor 3 the middle one), and with the weights resized by
    averaging over each output voxel's footprint (area interpolation): averaging keeps the mean
    weight, and with it the loss scale, at every resolution and does not miss thin border
    ridges that nearest sampling could step over. Outputs with scale weight 0 are skipped.

    Example:
        >>> loss = DeepSupervisionLoss(DiceCELoss())
        >>> outputs = [torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)]
        >>> value = loss(outputs, torch.randint(0, 3, (2, 16, 16)))  # weights 4/7, 2/7, 1/7

    Args:
        loss: the loss applied at every resolution.
        scale_weights: one weight per output, full resolution first, normalized to sum 1;
            None for :func:`deep_supervision_weights` of the number of outputs (1, 1/2, 1/4,
            ... with every output supervised). For nnU-Net's weighting pass
            ``deep_supervision_weights(n, drop_lowest=True)``.

    Raises:
        LossConfigError: on negative, non-finite or all-zero scale weights.
        TypeError: if ``loss`` is not a :class:`SegmentationLoss`.
    """

    def __init__(
        self, loss: SegmentationLoss, scale_weights: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        if not isinstance(loss, SegmentationLoss):
            raise TypeError(f"loss: {type(loss).__name__} is not a SegmentationLoss")
        self.loss = loss
        self.scale_weights: tuple[float, ...] | None = None
        if scale_weights is not None:
            values = [float(weight) for weight in scale_weights]
            if not values or not all(math.isfinite(w) and w >= 0 for w in values):
                raise LossConfigError(f"scale_weights: need finite values >= 0, got {values}")
            if sum(values) <= 0:
                raise LossConfigError(f"scale_weights: at least one must be > 0, got {values}")
            self.scale_weights = tuple(weight / sum(values) for weight in values)

    @property
    def needs_weights(self) -> bool:  # type: ignore[override]
        """True when the wrapped loss uses per-voxel weights."""
        return self.loss.needs_weights

    def extra_repr(self) -> str:
        return f"scale_weights={self.scale_weights}"

    def forward(
        self,
        logits: Tensor | Sequence[Tensor],
        target: Tensor,
        weights: Tensor | None = None,
    ) -> Tensor:
        """Weighted sum of the loss over outputs, full resolution first.

        Args:
            logits: outputs at decreasing resolutions, or one tensor (treated as one output).
            target: full-resolution class indices ``(B, *spatial)`` or ``(B, 1, *spatial)``.
            weights: full-resolution per-voxel weights, or None.

        Raises:
            LossInputError: on no outputs, a number of outputs different from the number of
                scale weights, or an output larger than or of other dimension than the target.
        """
        outputs = [logits] if isinstance(logits, Tensor) else list(logits)
        if not outputs:
            raise LossInputError("logits: need at least one output")
        scale_weights = self.scale_weights or deep_supervision_weights(len(outputs))
        if len(scale_weights) != len(outputs):
            raise LossInputError(
                f"logits: {len(outputs)} outputs but {len(scale_weights)} scale weights"
            )
        target = without_channel(target, outputs[0].ndim)
        if not self.loss.needs_weights:
            weights = None  # nothing to resize
        if weights is not None:
            weights = without_channel(weights, outputs[0].ndim)
        total: Tensor | None = None
        for level, (scale_weight, output) in enumerate(zip(scale_weights, outputs, strict=True)):
            size = tuple(output.shape[2:])
            if output.ndim != target.ndim + 1 or any(
                n > m for n, m in zip(size, target.shape[1:], strict=True)
            ):
                raise LossInputError(
                    f"logits[{level}]: spatial shape {size} does not fit in the target's "
                    f"{tuple(target.shape[1:])}"
                )
            if scale_weight == 0:
                continue
            level_weights = None if weights is None else _resized_weights(weights, size)
            term = scale_weight * self.loss(output, _resized_target(target, size), level_weights)
            total = term if total is None else total + term
        assert total is not None  # at least one scale weight is > 0
        return total


def _resized_target(target: Tensor, size: tuple[int, ...]) -> Tensor:
    if tuple(target.shape[1:]) == size:
        return target
    with torch.no_grad():
        resized = F.interpolate(target[:, None].float(), size=size, mode="nearest-exact")
    return resized[:, 0].to(target.dtype)


def _resized_weights(weights: Tensor, size: tuple[int, ...]) -> Tensor:
    if tuple(weights.shape[1:]) == size:
        return weights
    with torch.no_grad():
        return F.interpolate(weights[:, None].float(), size=size, mode="area")[:, 0]
