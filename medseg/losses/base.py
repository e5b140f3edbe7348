"""What every loss shares: the call signature and its input checks, the options model of a
configurable loss, and class weights."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol, Self

import torch
from pydantic import BaseModel, Field, model_validator
from torch import Tensor, nn

from medseg.config_io import OptionsModel
from medseg.errors import LossConfigError, LossInputError


class TermSpec(OptionsModel):
    """Options of one term of a loss spec: its weight in the sum and its loss class's options.

    A subclass per configurable loss declares the options of that loss's ``__init__`` with the
    same names and defaults. A bare number is the weight (``{"dice_ce": 1.0}``).
    """

    weight: float = Field(1.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _weight_shorthand(cls, data: object) -> object:
        if isinstance(data, int | float) and not isinstance(data, bool):
            return {"weight": data}
        if not isinstance(data, Mapping | BaseModel):
            raise ValueError(f"give a weight or a mapping of options, got {data!r}")
        return data

    def loss_options(self) -> dict[str, Any]:
        """The options given for the loss class (all but the weight; defaults left out)."""
        return self.model_dump(exclude={"weight"}, exclude_unset=True)


class SegmentationLoss(nn.Module):
    """Base class: validates inputs, casts to float32, disables autocast, calls ``_loss``.

    A loss that can be named in a config also sets ``config_name`` and ``Options`` and is
    listed in :data:`medseg.losses.registry.LOSSES`.

    Ignore label (sparse or partial annotations, the plan's ``ignore_label``): after
    :meth:`ignoring`, target voxels of that value count in neither the loss nor its gradient.
    The base class sets them to class 0 and hands ``_loss`` a ``labelled`` mask (1 where
    annotated, 0 where ignored) that every loss applies to its sums and means.

    Regions (a region-based plan, :mod:`medseg.regions`): a loss whose ``region_based`` is True
    takes one logit channel per region (sigmoid, no background channel) and, after
    :meth:`for_regions`, the same integer label map as target; it builds the region masks
    itself, so sampling, augmentation and deep supervision resize label maps as usual.

    Attributes:
        needs_weights: the loss uses the per-voxel ``weights`` argument.
        ignore_label: target value of unannotated voxels, or None (every voxel counts).
        region_based: the loss scores sigmoid region outputs, not softmax classes.
        regions: the label values of each region (after :meth:`for_regions`), or None.
        config_name: its name in a loss spec (``"dice_ce"``).
        Options: its options in a loss spec, a :class:`TermSpec` whose fields (but ``weight``)
            are the keyword arguments of ``__init__``.
    """

    needs_weights: bool = False
    ignore_label: int | None = None
    region_based: ClassVar[bool] = False
    regions: tuple[tuple[int, ...], ...] | None = None
    config_name: ClassVar[str]
    Options: ClassVar[type[TermSpec]]

    def ignoring(self, ignore_label: int | None) -> Self:
        """Leave target voxels of ``ignore_label`` out of this loss and every loss inside it.

        Returns:
            This loss, for chaining: ``build_loss(spec).ignoring(plan.ignore_label)``.

        Raises:
            LossConfigError: ``ignore_label`` is not None and below 1 (0 is background).
        """
        if ignore_label is not None and ignore_label < 1:
            raise LossConfigError(
                f"ignore_label: must be a label value >= 1 (0 is background), got {ignore_label}"
            )
        for module in self.modules():
            if isinstance(module, SegmentationLoss):
                module.ignore_label = ignore_label
        return self

    def for_regions(self, regions: Sequence[Sequence[int]] | None) -> Self:
        """Train this loss (and every loss inside it) on regions: ``regions[r]`` are the label
        values of the region of logit channel ``r``; None: softmax classes.

        Returns:
            This loss, for chaining.

        Raises:
            LossConfigError: a loss inside is not region-based while ``regions`` are given, or
                is region-based while they are not.
        """
        given = None if regions is None else tuple(tuple(int(v) for v in r) for r in regions)
        leaves = [m for m in self.modules() if "config_name" in type(m).__dict__]
        misfits = [str(m.config_name) for m in leaves if m.region_based != (given is not None)]
        if misfits:
            need = "regions (sigmoid outputs)" if given is None else "softmax classes"
            raise LossConfigError(
                f"loss {', '.join(misfits)}: trains {need}, but the plan "
                + ("has no regions" if given is None else "declares regions; use dice_bce")
            )
        for module in self.modules():
            if isinstance(module, SegmentationLoss):
                module.regions = given
        return self

    def forward(self, logits: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
        """Scalar loss of ``logits`` ``(B, K, *spatial)`` against ``target`` ``(B, *spatial)``.

        Raises:
            LossInputError: on wrong shapes or dtypes, target values outside ``0..K-1`` (and
                not the ignore label), or missing ``weights`` when ``needs_weights`` is True.
        """
        logits, target, weights = _validated_inputs(
            self, logits, target, weights if self.needs_weights else None
        )
        labelled = None
        if self.ignore_label is not None:
            ignored = target == self.ignore_label
            target = target.masked_fill(ignored, 0)  # never a class index
            labelled = (~ignored).float()
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return self._loss(logits, target, weights, labelled)

    def _loss(
        self, logits: Tensor, target: Tensor, weights: Tensor | None, labelled: Tensor | None
    ) -> Tensor:
        """The loss of validated float32 logits, int64 target ``0..K-1``, float32 weights (or
        None) and the float32 ``labelled`` mask ``(B, *spatial)`` (None: every voxel counts)."""
        raise NotImplementedError


def check_dice_options(smooth: float, **term_weights: float) -> None:
    """Check a Dice loss's ``smooth`` (finite, > 0) and its two term weights (finite, >= 0, not
    both 0), named as given (``dice_weight=1.0, ce_weight=0.5``).

    Raises:
        LossConfigError: naming the option that is wrong.
    """
    if not (math.isfinite(smooth) and smooth > 0):
        raise LossConfigError(f"smooth: must be finite and > 0, got {smooth}")
    for name, value in term_weights.items():
        if not (math.isfinite(value) and value >= 0):
            raise LossConfigError(f"{name}: must be finite and >= 0, got {value}")
    if not any(term_weights.values()):
        raise LossConfigError(f"{' and '.join(term_weights)}: at least one must be > 0")


def soft_dice_loss(
    probabilities: Tensor, targets: Tensor, *, smooth: float, batch_dice: bool
) -> Tensor:
    """``1 - mean Dice`` of probabilities and targets ``(B, K, *spatial)`` (ignored voxels
    already zeroed in both): per sample and channel, or per channel over the batch with
    ``batch_dice``; ``smooth`` is added to numerator and denominator."""
    spatial = tuple(range(2, probabilities.ndim))
    axes = (0, *spatial) if batch_dice else spatial
    overlap = (probabilities * targets).sum(axes)
    sizes = probabilities.sum(axes) + targets.sum(axes)
    dice = (2.0 * overlap + smooth) / (sizes + smooth)
    return 1.0 - dice.mean()


def voxel_average(values: Tensor, voxel_weights: Tensor | None) -> Tensor:
    """``sum(values * w) / sum(w)`` over all voxels, or the plain mean when ``w`` is None.

    0 (not NaN) when every weight is 0, e.g. a batch whose voxels are all ignored; voxels of
    weight 0 get an exactly zero gradient.
    """
    if voxel_weights is None:
        return values.mean()
    total = voxel_weights.sum().clamp_min(torch.finfo(voxel_weights.dtype).tiny)
    return (values * voxel_weights).sum() / total


def voxel_weights(
    class_weights: Tensor | None, target: Tensor, labelled: Tensor | None
) -> Tensor | None:
    """Weight of every voxel in a class-weighted mean: ``class_weights[target]`` times the
    ``labelled`` mask, either factor left out when None (None when both are)."""
    if class_weights is None:
        return labelled
    weights = class_weights[target]
    return weights if labelled is None else weights * labelled


def labelled_only(tensor: Tensor, labelled: Tensor | None) -> Tensor:
    """``tensor`` ``(B, K, *spatial)`` zeroed at ignored voxels (``labelled`` is 0 there)."""
    return tensor if labelled is None else tensor * labelled.unsqueeze(1)


def class_weight_tensor(class_weights: Sequence[float] | None) -> Tensor | None:
    """Class weights as a float32 tensor, or None.

    Raises:
        LossConfigError: on fewer than two, negative, non-finite or all-zero weights.
    """
    if class_weights is None:
        return None
    values = [float(weight) for weight in class_weights]
    if len(values) < 2 or not all(math.isfinite(w) and w >= 0 for w in values):
        raise LossConfigError(
            f"class_weights: need one finite value >= 0 per class (>= 2 classes), got {values}"
        )
    if sum(values) <= 0:
        raise LossConfigError(f"class_weights: at least one must be > 0, got {values}")
    return torch.tensor(values, dtype=torch.float32)


class ClassWeighted(Protocol):
    """A loss holding the ``class_weights`` buffer made by ``class_weight_tensor``."""

    class_weights: Tensor | None


def class_weights_for(loss: ClassWeighted, logits: Tensor) -> Tensor | None:
    """The ``class_weights`` buffer of ``loss`` on the logits' device, checked against them.

    Raises:
        LossInputError: the number of class weights differs from the logits' classes.
    """
    class_weights = loss.class_weights
    if class_weights is None:
        return None
    if class_weights.numel() != logits.shape[1]:
        raise LossInputError(
            f"{type(loss).__name__}: {class_weights.numel()} class weights but logits have "
            f"{logits.shape[1]} classes"
        )
    return class_weights.to(device=logits.device)


def without_channel(tensor: Tensor, logits_ndim: int) -> Tensor:
    """Drop a singleton channel axis: ``(B, 1, *spatial)`` -> ``(B, *spatial)``."""
    if tensor.ndim == logits_ndim and tensor.shape[1] == 1:
        return tensor.squeeze(1)
    return tensor


def _validated_inputs(
    loss: SegmentationLoss, logits: Tensor, target: Tensor, weights: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """float32 logits, int64 target ``(B, *spatial)`` and float32 weights (if needed)."""
    name = type(loss).__name__
    if not (isinstance(logits, Tensor) and logits.is_floating_point() and logits.ndim >= 3):
        raise LossInputError(f"{name}: logits must be a float tensor (B, K, *spatial)")
    n_classes = logits.shape[1]
    if loss.region_based:
        if loss.regions is None or n_classes != len(loss.regions):
            regions = "no regions" if loss.regions is None else f"{len(loss.regions)} regions"
            raise LossInputError(
                f"{name}: logits have {n_classes} channels; a region loss needs one per region "
                f"({regions}; see for_regions)"
            )
        n_classes = max(v for region in loss.regions for v in region) + 1  # label values
    elif n_classes < 2:
        raise LossInputError(
            f"{name}: logits have {n_classes} class along dim 1; need >= 2 (background + "
            "foreground) for a softmax loss"
        )
    expected = (logits.shape[0], *logits.shape[2:])
    target = without_channel(target, logits.ndim)
    if tuple(target.shape) != expected:
        raise LossInputError(
            f"{name}: target shape {tuple(target.shape)} does not match logits "
            f"{tuple(logits.shape)}; expected {expected} or {(expected[0], 1, *expected[1:])}"
        )
    if target.is_floating_point() or target.is_complex():
        raise LossInputError(f"{name}: target must hold integer class indices, got {target.dtype}")
    target = target.long()
    # One host-device sync; on CUDA an out-of-range index would otherwise end in an opaque
    # device-side assert inside cross_entropy or one_hot.
    outside = (target < 0) | (target >= n_classes)
    if loss.ignore_label is not None:
        outside &= target != loss.ignore_label
    if target.numel() and bool(outside.any()):
        ignoring = "" if loss.ignore_label is None else f" or the ignore label {loss.ignore_label}"
        raise LossInputError(
            f"{name}: target values must lie in 0..{n_classes - 1} for {n_classes} classes"
            f"{ignoring}, got {int(target.min())}..{int(target.max())}"
        )
    if loss.needs_weights:
        if weights is None:
            raise LossInputError(
                f"{name}: needs per-voxel weights (B, *spatial), got None; enable border weights "
                "in the plan and pass the batch's weights"
            )
        weights = without_channel(weights, logits.ndim)
        if tuple(weights.shape) != expected:
            raise LossInputError(
                f"{name}: weights shape {tuple(weights.shape)} does not match target {expected}"
            )
        weights = weights.float()
    return logits.float(), target, weights
