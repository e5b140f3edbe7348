"""Segmentation losses with one call signature, selectable from a config.

Every loss is a :class:`SegmentationLoss` called as ``loss(logits, target, weights=None)``:

* ``logits``: float ``(B, K, *spatial)``, raw network output, ``K >= 2`` classes including
  background, 2D or 3D spatial.
* ``target``: integer class indices ``(B, *spatial)`` or ``(B, 1, *spatial)``, values ``0..K-1``.
* ``weights``: optional float per-voxel weights ``(B, *spatial)`` (or ``(B, 1, *spatial)``), the
  border-weight maps of :mod:`medseg.preprocess.border_weights`. Only losses whose
  ``needs_weights`` is True use them; the others accept and ignore them, so a training loop can
  pass the same arguments to any loss and load weight maps only when ``loss.needs_weights``.

Losses are computed in float32 with autocast disabled, so fp16/bf16 logits from mixed-precision
training give the same value as float32 logits (the gradient is cast back to the logits' dtype).

Config form for :func:`build_loss`: a name (``"dice_ce"``), or a mapping of names to a weight or
to options (``{"dice_ce": 1.0, "border_ce": 0.5}``, ``{"focal": {"weight": 1.0, "gamma": 3.0}}``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from enum import StrEnum

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import Tensor, nn

from medseg.errors import MedsegError

# Floor of (1 - p_t) in the focal term: keeps the gradient of (1 - p_t)^gamma finite for
# gamma < 1 where p_t rounds to 1 (those voxels contribute ~0 to the loss anyway).
_FOCAL_FLOOR = 1e-12


class LossConfigError(MedsegError, ValueError):
    """A loss option or loss spec is unknown or invalid."""


class LossInputError(MedsegError, ValueError):
    """Logits, target or weights handed to a loss have the wrong shape, dtype or values."""


class SegmentationLoss(nn.Module):
    """Base class: validates inputs, casts to float32, disables autocast, calls ``_loss``.

    Attributes:
        needs_weights: the loss uses the per-voxel ``weights`` argument.
    """

    needs_weights: bool = False

    def forward(self, logits: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
        """Scalar loss of ``logits`` ``(B, K, *spatial)`` against ``target`` ``(B, *spatial)``.

        Raises:
            LossInputError: on wrong shapes or dtypes, target values outside ``0..K-1``, or
                missing ``weights`` when ``needs_weights`` is True.
        """
        logits, target, weights = _validated_inputs(
            self, logits, target, weights if self.needs_weights else None
        )
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return self._loss(logits, target, weights)

    def _loss(self, logits: Tensor, target: Tensor, weights: Tensor | None) -> Tensor:
        """The loss of validated float32 logits, int64 target and float32 weights (or None)."""
        raise NotImplementedError


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

    def __init__(self, class_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.class_weights: Tensor | None
        self.register_buffer("class_weights", _class_weight_tensor(class_weights), persistent=False)

    def _loss(self, logits: Tensor, target: Tensor, weights: Tensor | None) -> Tensor:
        return F.cross_entropy(logits, target, weight=_class_weights_for(self, logits))


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
            :class:`CrossEntropyLoss`); Dice classes are always averaged with equal weight.

    Raises:
        LossConfigError: on a non-positive ``smooth``, negative term weights, both term weights
            0, or invalid class weights.
    """

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
        if not (math.isfinite(smooth) and smooth > 0):
            raise LossConfigError(f"smooth: must be finite and > 0, got {smooth}")
        for name, value in (("dice_weight", dice_weight), ("ce_weight", ce_weight)):
            if not (math.isfinite(value) and value >= 0):
                raise LossConfigError(f"{name}: must be finite and >= 0, got {value}")
        if dice_weight == 0 and ce_weight == 0:
            raise LossConfigError("dice_weight and ce_weight: at least one must be > 0")
        self.include_background = include_background
        self.smooth = float(smooth)
        self.batch_dice = batch_dice
        self.dice_weight = float(dice_weight)
        self.ce_weight = float(ce_weight)
        self.class_weights: Tensor | None
        self.register_buffer("class_weights", _class_weight_tensor(class_weights), persistent=False)

    def extra_repr(self) -> str:
        return (
            f"include_background={self.include_background}, smooth={self.smooth}, "
            f"batch_dice={self.batch_dice}, dice_weight={self.dice_weight}, "
            f"ce_weight={self.ce_weight}"
        )

    def _loss(self, logits: Tensor, target: Tensor, weights: Tensor | None) -> Tensor:
        total = logits.new_zeros(())
        if self.dice_weight:
            total = total + self.dice_weight * self._dice_loss(logits, target)
        if self.ce_weight:
            ce = F.cross_entropy(logits, target, weight=_class_weights_for(self, logits))
            total = total + self.ce_weight * ce
        return total

    def _dice_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        probabilities = torch.softmax(logits, dim=1)
        one_hot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probabilities.dtype)
        if not self.include_background:
            probabilities, one_hot = probabilities[:, 1:], one_hot[:, 1:]
        spatial = tuple(range(2, logits.ndim))
        axes = (0, *spatial) if self.batch_dice else spatial
        overlap = (probabilities * one_hot).sum(axes)
        sizes = probabilities.sum(axes) + one_hot.sum(axes)
        dice = (2.0 * overlap + self.smooth) / (sizes + self.smooth)
        return 1.0 - dice.mean()


class FocalLoss(SegmentationLoss):
    """Multi-class focal loss on softmax: ``-(1 - p_t)^gamma * log(p_t)`` (Lin et al. 2017).

    ``p_t`` is the probability of the target class. ``class_weights`` play the role of the
    paper's alpha and are averaged like :class:`CrossEntropyLoss` does (``sum(a[y] * fl) /
    sum(a[y])``), so ``gamma=0`` gives exactly the cross-entropy with the same class weights.

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

    def __init__(self, gamma: float = 2.0, class_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if not (math.isfinite(gamma) and gamma >= 0):
            raise LossConfigError(f"gamma: must be finite and >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.class_weights: Tensor | None
        self.register_buffer("class_weights", _class_weight_tensor(class_weights), persistent=False)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"

    def _loss(self, logits: Tensor, target: Tensor, weights: Tensor | None) -> Tensor:
        log_p_t = F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
        focal = -log_p_t
        if self.gamma:
            # -expm1(log p) is 1 - p without cancellation when p is close to 1.
            focal = (-torch.expm1(log_p_t)).clamp_min(_FOCAL_FLOOR).pow(self.gamma) * focal
        class_weights = _class_weights_for(self, logits)
        if class_weights is None:
            return focal.mean()
        alpha = class_weights[target]
        return (alpha * focal).sum() / alpha.sum()


class BorderWeightedCELoss(SegmentationLoss):
    """Per-voxel weighted cross-entropy with U-Net border-weight maps: ``mean(w * ce)``.

    The mean runs over all voxels of the batch, not ``sum(w * ce) / sum(w)``: it is the U-Net
    energy (Ronneberger et al. 2015, eq. 1, a weighted sum) divided by the constant voxel count,
    so every voxel's gradient is proportional to its own weight, independent of how many border
    voxels share its batch, and the value equals plain cross-entropy when all weights are 1.
    Its scale is that of cross-entropy times the mean weight (class balancing and border peaks
    of ``1 + w0`` make it typically a few times larger).

    Example:
        >>> loss = BorderWeightedCELoss()
        >>> target = torch.zeros(1, 4, 4, dtype=torch.long)
        >>> value = loss(torch.zeros(1, 2, 4, 4), target, torch.full((1, 4, 4), 2.0))
        >>> round(value.item(), 4)  # 2 * ln 2
        1.3863

    Raises:
        LossInputError: (when called) if ``weights`` is None or its shape differs from target's.
    """

    needs_weights = True

    def _loss(self, logits: Tensor, target: Tensor, weights: Tensor | None) -> Tensor:
        assert weights is not None  # guaranteed by _validated_inputs since needs_weights is True
        return (weights * F.cross_entropy(logits, target, reduction="none")).mean()


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
        target = _without_channel(target, outputs[0].ndim)
        if not self.loss.needs_weights:
            weights = None  # nothing to resize
        if weights is not None:
            weights = _without_channel(weights, outputs[0].ndim)
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


class LossName(StrEnum):
    """Names of the losses in a loss spec."""

    CE = "ce"
    DICE_CE = "dice_ce"
    FOCAL = "focal"
    BORDER_CE = "border_ce"


class _TermSpec(BaseModel):
    """One term of a loss spec: its weight in the sum and the options of its loss class."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float = Field(1.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _weight_shorthand(cls, data: object) -> object:
        if isinstance(data, int | float) and not isinstance(data, bool):
            return {"weight": data}
        if not isinstance(data, Mapping | BaseModel):
            raise ValueError(f"give a weight or a mapping of options, got {data!r}")
        return data


class CESpec(_TermSpec):
    """Options of :class:`CrossEntropyLoss`."""

    class_weights: tuple[float, ...] | None = None


class DiceCESpec(_TermSpec):
    """Options of :class:`DiceCELoss`."""

    include_background: bool = False
    smooth: float = 1e-5
    batch_dice: bool = False
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    class_weights: tuple[float, ...] | None = None


class FocalSpec(_TermSpec):
    """Options of :class:`FocalLoss`."""

    gamma: float = 2.0
    class_weights: tuple[float, ...] | None = None


class BorderCESpec(_TermSpec):
    """Options of :class:`BorderWeightedCELoss` (none besides the weight)."""


class LossSpec(BaseModel):
    """A loss as configured: each present field is one weighted term of the sum.

    Example:
        >>> LossSpec.model_validate({"dice_ce": 1.0, "focal": {"gamma": 3.0}}).names()
        [<LossName.DICE_CE: 'dice_ce'>, <LossName.FOCAL: 'focal'>]
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ce: CESpec | None = None
    dice_ce: DiceCESpec | None = None
    focal: FocalSpec | None = None
    border_ce: BorderCESpec | None = None

    @model_validator(mode="after")
    def _at_least_one_term(self) -> LossSpec:
        if not self.names():
            raise ValueError(f"no loss terms; give at least one of {_valid_names()}")
        return self

    def names(self) -> list[LossName]:
        """Names of the configured terms, in field order."""
        return [name for name in LossName if getattr(self, name.value) is not None]


_LOSS_CLASSES: dict[LossName, type[SegmentationLoss]] = {
    LossName.CE: CrossEntropyLoss,
    LossName.DICE_CE: DiceCELoss,
    LossName.FOCAL: FocalLoss,
    LossName.BORDER_CE: BorderWeightedCELoss,
}

_SPEC_CLASSES: dict[LossName, type[_TermSpec]] = {
    LossName.CE: CESpec,
    LossName.DICE_CE: DiceCESpec,
    LossName.FOCAL: FocalSpec,
    LossName.BORDER_CE: BorderCESpec,
}


def parse_loss_spec(spec: LossSpec | Mapping[str, object] | str) -> LossSpec:
    """Validate a loss spec: a name, a mapping of names to weights or options, or a LossSpec.

    Raises:
        LossConfigError: on unknown loss names or options (the message lists the valid ones),
            invalid values, or no terms.
    """
    if isinstance(spec, LossSpec):
        return spec
    if isinstance(spec, str):
        spec = {spec: 1.0}
    if not isinstance(spec, Mapping):
        raise LossConfigError(
            "loss spec: expected a loss name, a mapping of loss names to weights or options, "
            f"or a LossSpec; got {type(spec).__name__}"
        )
    try:
        return LossSpec.model_validate(dict(spec))
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        raise LossConfigError(f"loss spec {dict(spec)!r}: {problems}") from exc


def build_loss(spec: LossSpec | Mapping[str, object] | str) -> SegmentationLoss:
    """Build the loss of a spec: the bare loss for one term of weight 1, else a CombinedLoss.

    Example:
        >>> build_loss({"dice_ce": 1.0, "border_ce": 0.5}).needs_weights
        True

    Raises:
        LossConfigError: see :func:`parse_loss_spec`; also invalid option values, prefixed
            with the loss name.
    """
    spec = parse_loss_spec(spec)
    terms: list[tuple[float, SegmentationLoss]] = []
    for name in spec.names():
        term: _TermSpec = getattr(spec, name.value)
        options = term.model_dump(exclude={"weight"}, exclude_unset=True)
        try:
            terms.append((term.weight, _LOSS_CLASSES[name](**options)))
        except LossConfigError as exc:
            raise LossConfigError(f"{name.value}: {exc}") from exc
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][1]
    return CombinedLoss(terms)


def _valid_names() -> str:
    return ", ".join(name.value for name in LossName)


def _describe(error: Mapping) -> str:
    """One pydantic error as ``location: problem``, naming valid choices for unknown keys."""
    location = [str(part) for part in error["loc"]]
    if error["type"] == "extra_forbidden" and len(location) == 1:
        return f"unknown loss {location[0]!r}; valid losses: {_valid_names()}"
    if error["type"] == "extra_forbidden" and len(location) == 2:
        options = _SPEC_CLASSES[LossName(location[0])].model_fields
        return f"{location[0]}: unknown option {location[1]!r}; valid options: {', '.join(options)}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{'.'.join(location)}: {message}" if location else message


def _class_weight_tensor(class_weights: Sequence[float] | None) -> Tensor | None:
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


def _class_weights_for(loss: nn.Module, logits: Tensor) -> Tensor | None:
    class_weights = loss.class_weights
    if class_weights is None:
        return None
    if class_weights.numel() != logits.shape[1]:
        raise LossInputError(
            f"{type(loss).__name__}: {class_weights.numel()} class weights but logits have "
            f"{logits.shape[1]} classes"
        )
    return class_weights.to(device=logits.device)


def _without_channel(tensor: Tensor, logits_ndim: int) -> Tensor:
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
    if n_classes < 2:
        raise LossInputError(
            f"{name}: logits have {n_classes} class along dim 1; need >= 2 (background + "
            "foreground) for a softmax loss"
        )
    expected = (logits.shape[0], *logits.shape[2:])
    target = _without_channel(target, logits.ndim)
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
    if target.numel() and bool(((target < 0) | (target >= n_classes)).any()):
        raise LossInputError(
            f"{name}: target values must lie in 0..{n_classes - 1} for {n_classes} classes, "
            f"got {int(target.min())}..{int(target.max())}"
        )
    if loss.needs_weights:
        if weights is None:
            raise LossInputError(
                f"{name}: needs per-voxel weights (B, *spatial), got None; enable border weights "
                "in the plan and pass the batch's weights"
            )
        weights = _without_channel(weights, logits.ndim)
        if tuple(weights.shape) != expected:
            raise LossInputError(
                f"{name}: weights shape {tuple(weights.shape)} does not match target {expected}"
            )
        weights = weights.float()
    return logits.float(), target, weights


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
