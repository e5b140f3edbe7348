"""Training-time augmentation of batched torch tensors, on whatever device the batch lives on.

Choosing and applying are separate steps (the TorchIO lesson): :func:`sample_parameters` draws
every random choice of a batch from a ``torch.Generator`` into :class:`AugmentationParameters`;
:func:`apply` applies them deterministically. :class:`Augmenter` chains both, seeded.

Inputs: ``image`` ``(B, C, *spatial)`` float, ``label`` ``(B, *spatial)`` integer, optional
``weights`` ``(B, *spatial)`` float; ``spatial`` is ``(H, W)`` or ``(X, Y, Z)``. Axis numbers in
the configuration and the parameters count spatial axes in tensor order (0 = first spatial axis).

Order of application (parameters equal to their identity value skip a step):

1. **Rotation and scaling**, one affine per sample, about the centre of the patch, in voxel units
   (``F.affine_grid`` + ``F.grid_sample``, ``align_corners=False``). The image and the weights are
   interpolated (bi/trilinear), the label by nearest neighbour only, so label values are never
   blended: after augmentation they are a subset of the values before plus background. Outside
   the input the image is :data:`IMAGE_PAD_VALUE` (0: images are z-score normalized, so 0 is the
   mean, a neutral intensity), the label :data:`LABEL_PAD_VALUE` (0, background) and the weights
   :data:`WEIGHTS_PAD_VALUE` (1, neutral), as in patch sampling.
2. **Mirroring** along ``mirror_axes``, exact (``torch.flip``).
3. **Gaussian noise**, **brightness** (multiplicative), **contrast** (around the mean, clipped to
   the original range) and **gamma** (on min-max normalized intensities, mapped back), image only.
   Intensity statistics are per sample and channel; one parameter per sample serves all channels.

Rotations and scalings act in voxel space, which is physical space when the patch is isotropic
(nnU-Net's defaults: ±30° about every axis). For anisotropic 3D data rotate in plane only, about the
thick-slice axis (``rotation_axes=(2,)``; nnU-Net then allows ±180°).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from medseg.errors import AugmentationError, GeometryMismatchError
from medseg.train.sampling import IMAGE_PAD_VALUE, LABEL_PAD_VALUE, WEIGHTS_PAD_VALUE

__all__ = [
    "IMAGE_PAD_VALUE",
    "LABEL_PAD_VALUE",
    "WEIGHTS_PAD_VALUE",
    "AugmentationConfig",
    "AugmentationError",
    "AugmentationParameters",
    "AugmentedBatch",
    "Augmenter",
    "apply",
    "rotation_scale_affine",
    "sample_parameters",
]

_EPS = 1e-8
Range = tuple[float, float]


class AugmentationConfig(BaseModel):
    """Probabilities and ranges of the random augmentations (defaults: nnU-Net's).

    Every ``*_probability`` is the chance, per sample, that the transform is applied; mirroring
    is decided per sample and per axis.

    Attributes:
        rotation_probability: chance of a rotation.
        rotation_max_degrees: angles are uniform in ``±rotation_max_degrees``, independently per
            rotation axis.
        rotation_axes: 3D only: spatial axes rotated *about*; None means all three. ``(2,)``
            rotates in the (0, 1) plane only, for data with thick slices along axis 2. 2D data
            always has its single in-plane angle.
        scale_probability: chance of an isotropic scaling.
        scale_range: the factor is uniform in this range and multiplies the sampling coordinates,
            as in nnU-Net: above 1 the patch sees a larger field of view, anatomy looks smaller.
        mirror_probability: chance of a flip along each axis of ``mirror_axes``.
        mirror_axes: spatial axes that may be flipped; None means all. Restrict it where anatomy
            does not allow a flip: flipping left-right turns a left kidney into a right one, so
            with lateralized labels (``kidney_left``/``kidney_right``) leave the left-right axis
            (RAS axis 0) out.
        noise_probability: chance of additive Gaussian noise.
        noise_sigma_range: the standard deviation is uniform in this range.
        brightness_probability: chance of a multiplicative brightness change.
        brightness_range: the factor is uniform in this range.
        contrast_probability: chance of a contrast change.
        contrast_range: factor range; below and above 1 are equally likely when the range
            straddles 1 (nnU-Net).
        gamma_probability: chance of a gamma transform.
        gamma_range: gamma range; below and above 1 are equally likely when it straddles 1.
        gamma_invert_probability: chance that an applied gamma acts on the inverted intensities
            (``1 - x`` after min-max normalization), which brightens dark regions instead.
        gamma_retain_stats: restore each channel's mean and standard deviation after gamma
            (nnU-Net does).
    """

    model_config = ConfigDict(extra="forbid")

    rotation_probability: float = Field(0.2, ge=0, le=1)
    rotation_max_degrees: float = Field(30.0, ge=0, le=180)
    rotation_axes: tuple[int, ...] | None = None
    scale_probability: float = Field(0.2, ge=0, le=1)
    scale_range: Range = (0.7, 1.4)
    mirror_probability: float = Field(0.5, ge=0, le=1)
    mirror_axes: tuple[int, ...] | None = None
    noise_probability: float = Field(0.1, ge=0, le=1)
    noise_sigma_range: Range = (0.0, 0.1)
    brightness_probability: float = Field(0.15, ge=0, le=1)
    brightness_range: Range = (0.75, 1.25)
    contrast_probability: float = Field(0.15, ge=0, le=1)
    contrast_range: Range = (0.75, 1.25)
    gamma_probability: float = Field(0.3, ge=0, le=1)
    gamma_range: Range = (0.7, 1.5)
    gamma_invert_probability: float = Field(0.0, ge=0, le=1)
    gamma_retain_stats: bool = True

    @field_validator("rotation_axes", "mirror_axes")
    @classmethod
    def _check_axes(cls, axes: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if axes is not None and (
            len(set(axes)) != len(axes) or any(a not in (0, 1, 2) for a in axes)
        ):
            raise ValueError(f"axes must be distinct spatial axes among 0, 1, 2, got {axes}")
        return axes

    @field_validator("noise_sigma_range", "brightness_range", "contrast_range")
    @classmethod
    def _check_non_negative_range(cls, bounds: Range) -> Range:
        if not 0 <= bounds[0] <= bounds[1]:
            raise ValueError(f"range must satisfy 0 <= low <= high, got {bounds}")
        return bounds

    @field_validator("scale_range", "gamma_range")
    @classmethod
    def _check_positive_range(cls, bounds: Range) -> Range:
        if not 0 < bounds[0] <= bounds[1]:
            raise ValueError(f"range must satisfy 0 < low <= high, got {bounds}")
        return bounds


@dataclass(frozen=True, eq=False)
class AugmentationParameters:
    """Every random choice for one batch of ``B`` samples with ``D`` spatial axes.

    A value equal to its identity (identity matrix, no flip, sigma 0, factors and gamma 1) means
    "not applied", and the step is skipped for that sample. Keep the parameters on the CPU (as
    :class:`Augmenter` does) to avoid device synchronisation when ``apply`` picks the samples.

    Attributes:
        affine: float ``(B, D, D + 1)``: maps a voxel position of the output, relative to the
            patch centre and in tensor axis order, to the input position it is read from
            (``p_in = A @ p_out + t``, in voxels).
        flip: bool ``(B, D)``: mirror along each spatial axis.
        noise_sigma: float ``(B,)``: standard deviation of the additive noise (0: none).
        noise_seed: int64 ``(B,)``: seed of each sample's noise field. The field differs between
            CPU and CUDA for one seed; every other parameter is device-independent.
        brightness: float ``(B,)``: intensity factor.
        contrast: float ``(B,)``: factor of the deviation from the mean.
        gamma: float ``(B,)``: exponent on min-max normalized intensities.
        gamma_inverted: bool ``(B,)``: gamma acts on inverted intensities.
        gamma_retain_stats: restore mean and standard deviation after gamma.
    """

    affine: torch.Tensor
    flip: torch.Tensor
    noise_sigma: torch.Tensor
    noise_seed: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    gamma: torch.Tensor
    gamma_inverted: torch.Tensor
    gamma_retain_stats: bool = True

    def __post_init__(self) -> None:
        batch, dims = self.affine.shape[0], self.affine.shape[1]
        expected = {
            "affine": (batch, dims, dims + 1),
            "flip": (batch, dims),
            **{name: (batch,) for name in _PER_SAMPLE_FIELDS},
        }
        for name, shape in expected.items():
            actual = tuple(getattr(self, name).shape)
            if actual != shape:
                raise AugmentationError(f"parameter {name} has shape {actual}, expected {shape}")
        if dims not in (2, 3):
            raise AugmentationError(f"parameters are for {dims} spatial axes, expected 2 or 3")

    @property
    def batch_size(self) -> int:
        """Number of samples."""
        return self.affine.shape[0]

    @property
    def spatial_dims(self) -> int:
        """Number of spatial axes (2 or 3)."""
        return self.affine.shape[1]

    @classmethod
    def identity(
        cls, *, batch_size: int, spatial_dims: int, device: torch.device | str | None = None
    ) -> AugmentationParameters:
        """Parameters that leave every input exactly unchanged."""
        eye = torch.eye(spatial_dims, spatial_dims + 1, device=device)
        ones = torch.ones(batch_size, device=device)
        return cls(
            affine=eye.expand(batch_size, -1, -1).clone(),
            flip=torch.zeros(batch_size, spatial_dims, dtype=torch.bool, device=device),
            noise_sigma=torch.zeros(batch_size, device=device),
            noise_seed=torch.zeros(batch_size, dtype=torch.int64, device=device),
            brightness=ones.clone(),
            contrast=ones.clone(),
            gamma=ones.clone(),
            gamma_inverted=torch.zeros(batch_size, dtype=torch.bool, device=device),
        )

    def to(self, device: torch.device | str) -> AugmentationParameters:
        """The same parameters on ``device``."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        moved: dict[str, Any] = {  # tensors and flags alike
            k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in values.items()
        }
        return AugmentationParameters(**moved)


_PER_SAMPLE_FIELDS = (
    "noise_sigma",
    "noise_seed",
    "brightness",
    "contrast",
    "gamma",
    "gamma_inverted",
)


class AugmentedBatch(NamedTuple):
    """Augmented tensors; unpacks as ``image, label, weights``."""

    image: torch.Tensor
    label: torch.Tensor
    weights: torch.Tensor | None


def rotation_scale_affine(rotation_degrees: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Affine ``(B, D, D + 1)`` that rotates the content and scales the sampling coordinates.

    Args:
        rotation_degrees: ``(B, 1)`` in 2D: the angle in the (0, 1) plane, turning axis 0 towards
            axis 1 (as ``torch.rot90`` with ``dims`` ordered the same way). ``(B, 3)`` in 3D:
            angles about axes 0, 1 and 2, right-handed; the rotation about axis 2 is applied first.
        scale: ``(B,)`` factor on the sampling coordinates (above 1: anatomy looks smaller).

    Returns:
        float32 affine on the device of ``rotation_degrees``; exactly the identity for zero angles
        and unit scale.

    Raises:
        AugmentationError: ``rotation_degrees`` is neither ``(B, 1)`` nor ``(B, 3)``.
    """
    angles = torch.deg2rad(rotation_degrees.double())
    cos, sin = torch.cos(angles), torch.sin(angles)
    batch = angles.shape[0]
    if angles.shape[1] == 1:
        dims, planes = 2, [(0, 1)]
    elif angles.shape[1] == 3:
        dims, planes = 3, [(1, 2), (2, 0), (0, 1)]
    else:
        raise AugmentationError(f"rotation_degrees must be (B, 1) or (B, 3), got {angles.shape}")
    rotation = torch.eye(dims, dtype=torch.float64, device=angles.device).repeat(batch, 1, 1)
    for k, (a, b) in enumerate(planes):
        about_axis = torch.eye(dims, dtype=torch.float64, device=angles.device).repeat(batch, 1, 1)
        about_axis[:, a, a] = cos[:, k]
        about_axis[:, b, b] = cos[:, k]
        about_axis[:, b, a] = sin[:, k]  # content: axis a turns towards axis b
        about_axis[:, a, b] = -sin[:, k]
        rotation = rotation @ about_axis
    # Pull-back: an output voxel reads the input at R^T p, scaled as nnU-Net scales coordinates.
    linear = rotation.transpose(1, 2) * scale.double().to(angles.device)[:, None, None]
    translation = torch.zeros(batch, dims, 1, dtype=torch.float64, device=angles.device)
    return torch.cat([linear, translation], dim=2).float()


def _bernoulli(probability: float, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(batch_size, generator=generator, device=generator.device) < probability


def _uniform(bounds: Range, shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(*shape, generator=generator, device=generator.device)


def _split_at_one(bounds: Range, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """nnU-Net's factor draw: below 1 or above 1 with equal chance when ``bounds`` straddles 1."""
    low, high = bounds
    coin = _bernoulli(0.5, batch_size, generator)
    below = coin | (high <= 1) if low < 1 else torch.zeros_like(coin)
    lows = torch.where(below, low, max(low, 1.0))
    highs = torch.where(below, min(high, 1.0), high)
    return lows + (highs - lows) * torch.rand(
        batch_size, generator=generator, device=generator.device
    )


def _require_axes_exist(axes: tuple[int, ...], spatial_dims: int, option: str) -> None:
    if any(axis >= spatial_dims for axis in axes):
        raise AugmentationError(
            f"{option}={axes} names an axis that {spatial_dims}D data does not have"
        )


def sample_parameters(
    config: AugmentationConfig, *, batch_size: int, spatial_dims: int, generator: torch.Generator
) -> AugmentationParameters:
    """Draw the random parameters of one batch (the only random step).

    Every value is drawn for every sample, in a fixed order, whether it is used or not, so the
    stream of draws never depends on earlier outcomes.

    Args:
        config: probabilities and ranges.
        batch_size: number of samples.
        spatial_dims: 2 or 3.
        generator: source of randomness; the parameters are created on its device.

    Returns:
        Parameters with identity values for the transforms a sample does not get.

    Raises:
        AugmentationError: ``spatial_dims`` is not 2 or 3, or an axis option names a missing axis.
    """
    if spatial_dims not in (2, 3):
        raise AugmentationError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    mirror_axes = tuple(range(spatial_dims)) if config.mirror_axes is None else config.mirror_axes
    _require_axes_exist(mirror_axes, spatial_dims, "mirror_axes")
    if spatial_dims == 2:
        rotation_axes: tuple[int, ...] = (0,)
    else:
        rotation_axes = (0, 1, 2) if config.rotation_axes is None else config.rotation_axes
    n_angles = 1 if spatial_dims == 2 else 3

    max_deg = config.rotation_max_degrees
    rotated = _bernoulli(config.rotation_probability, batch_size, generator)
    angles = _uniform((-max_deg, max_deg), (batch_size, n_angles), generator)
    angle_allowed = torch.zeros(n_angles, dtype=torch.bool, device=generator.device)
    angle_allowed[list(rotation_axes)] = True
    angles = torch.where(rotated[:, None] & angle_allowed, angles, 0.0)

    scaled = _bernoulli(config.scale_probability, batch_size, generator)
    scale = torch.where(scaled, _uniform(config.scale_range, (batch_size,), generator), 1.0)

    flip_draw = torch.rand(batch_size, spatial_dims, generator=generator, device=generator.device)
    axis_allowed = torch.zeros(spatial_dims, dtype=torch.bool, device=generator.device)
    axis_allowed[list(mirror_axes)] = True
    flip = (flip_draw < config.mirror_probability) & axis_allowed

    noisy = _bernoulli(config.noise_probability, batch_size, generator)
    sigma = torch.where(noisy, _uniform(config.noise_sigma_range, (batch_size,), generator), 0.0)
    seed = torch.randint(
        0, 2**62, (batch_size,), generator=generator, device=generator.device, dtype=torch.int64
    )

    brightened = _bernoulli(config.brightness_probability, batch_size, generator)
    brightness = torch.where(
        brightened, _uniform(config.brightness_range, (batch_size,), generator), 1.0
    )
    contrasted = _bernoulli(config.contrast_probability, batch_size, generator)
    contrast = torch.where(
        contrasted, _split_at_one(config.contrast_range, batch_size, generator), 1.0
    )
    gammaed = _bernoulli(config.gamma_probability, batch_size, generator)
    gamma = torch.where(gammaed, _split_at_one(config.gamma_range, batch_size, generator), 1.0)
    inverted = _bernoulli(config.gamma_invert_probability, batch_size, generator) & gammaed

    return AugmentationParameters(
        affine=rotation_scale_affine(angles, scale),
        flip=flip,
        noise_sigma=sigma,
        noise_seed=seed,
        brightness=brightness,
        contrast=contrast,
        gamma=gamma,
        gamma_inverted=inverted,
        gamma_retain_stats=config.gamma_retain_stats,
    )


def _normalized_theta(affine: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Convert voxel-unit affines to ``F.affine_grid``'s normalized, reversed-axis convention."""
    dims = len(spatial_shape)
    # align_corners=False: normalized coordinate x = u / (n / 2), u relative to the centre.
    half = torch.tensor([n / 2 for n in spatial_shape], dtype=torch.float64, device=affine.device)
    linear = affine[:, :, :dims].double() * half[None, None, :] / half[None, :, None]
    translation = affine[:, :, dims].double() / half[None, :]
    # affine_grid's coordinate 0 indexes the last tensor axis.
    theta = torch.cat([linear.flip(1, 2), translation.flip(1)[..., None]], dim=2)
    return theta.float()


def _resample(x: torch.Tensor, grid: torch.Tensor, *, mode: str, pad: float) -> torch.Tensor:
    """``grid_sample`` with a constant ``pad`` outside (zeros padding of ``x - pad``)."""
    grid = grid.to(x.dtype)
    if pad == 0:
        return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)
    shifted = F.grid_sample(x - pad, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return shifted + pad


def _indices(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    return mask.nonzero().flatten().to(device)


def _values(values: torch.Tensor, idx: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample values at ``idx``, shaped to broadcast over ``(n, C, *spatial)``."""
    picked = values.to(like.device)[idx].to(like.dtype)
    return picked.reshape(-1, *([1] * (like.dim() - 1)))


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per sample and channel: min, max, mean, std, shaped ``(n, C, 1, ...)``."""
    flat = x.flatten(2)
    shape = (*x.shape[:2], *([1] * (x.dim() - 2)))
    lo, hi = flat.amin(dim=2), flat.amax(dim=2)
    std, mean = torch.std_mean(flat, dim=2, correction=0)
    return lo.reshape(shape), hi.reshape(shape), mean.reshape(shape), std.reshape(shape)


def _check_inputs(
    parameters: AugmentationParameters,
    image: torch.Tensor,
    label: torch.Tensor,
    weights: torch.Tensor | None,
) -> None:
    dims = parameters.spatial_dims
    if image.dim() != dims + 2:
        raise AugmentationError(
            f"image must be (B, C, *spatial) with {dims} spatial axes, got {tuple(image.shape)}"
        )
    if image.shape[0] != parameters.batch_size:
        raise AugmentationError(
            f"image batch size {image.shape[0]} != parameters batch size {parameters.batch_size}"
        )
    if not image.is_floating_point():
        raise AugmentationError(f"image must be floating point, got {image.dtype}")
    expected = (image.shape[0], *image.shape[2:])
    for name, tensor in (("label", label), ("weights", weights)):
        if tensor is not None and tuple(tensor.shape) != tuple(expected):
            raise GeometryMismatchError(
                f"{name} has shape {tuple(tensor.shape)}, image {tuple(image.shape)} "
                f"needs {tuple(expected)}"
            )
    if label.is_floating_point() or label.is_complex():
        raise AugmentationError(f"label must hold integers, got {label.dtype}")


def apply(
    parameters: AugmentationParameters,
    *,
    image: torch.Tensor,
    label: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> AugmentedBatch:
    """Apply ``parameters`` to a batch (deterministic; new tensors, inputs untouched).

    Args:
        parameters: from :func:`sample_parameters` or built by hand.
        image: float ``(B, C, *spatial)``, normalized so 0 is a neutral intensity.
        label: integer ``(B, *spatial)``.
        weights: optional float ``(B, *spatial)`` per-voxel loss weights.

    Returns:
        The augmented image, label (same dtype, values a subset of the input values plus 0) and
        weights, on the inputs' device.

    Raises:
        AugmentationError: the batch does not fit the parameters.
        GeometryMismatchError: label or weights do not share the image's grid.
    """
    _check_inputs(parameters, image, label, weights)
    device = image.device
    image, label = image.clone(), label.clone()
    weights = None if weights is None else weights.clone()
    spatial_shape = image.shape[2:]

    identity = torch.eye(
        parameters.spatial_dims, parameters.spatial_dims + 1, device=parameters.affine.device
    )
    idx = _indices(~(parameters.affine == identity).all(dim=(1, 2)), device)
    if idx.numel():
        theta = _normalized_theta(parameters.affine.to(device)[idx], spatial_shape)
        size = (idx.numel(), 1, *spatial_shape)
        grid = F.affine_grid(theta, list(size), align_corners=False)
        image[idx] = _resample(image[idx], grid, mode="bilinear", pad=IMAGE_PAD_VALUE)
        # float32 holds label values up to 2**24 exactly; nearest only copies them.
        moved = _resample(label[idx, None].float(), grid, mode="nearest", pad=LABEL_PAD_VALUE)
        label[idx] = moved[:, 0].to(label.dtype)
        if weights is not None:
            moved = _resample(weights[idx, None], grid, mode="bilinear", pad=WEIGHTS_PAD_VALUE)
            weights[idx] = moved[:, 0]

    for axis in range(parameters.spatial_dims):
        idx = _indices(parameters.flip[:, axis], device)
        if idx.numel():
            image[idx] = image[idx].flip(axis + 2)
            label[idx] = label[idx].flip(axis + 1)
            if weights is not None:
                weights[idx] = weights[idx].flip(axis + 1)

    idx = _indices(parameters.noise_sigma > 0, device)
    if idx.numel():
        sigma = _values(parameters.noise_sigma, idx, image)
        seeds = parameters.noise_seed[idx.to(parameters.noise_seed.device)].tolist()
        noise = image.new_empty((idx.numel(), *image.shape[1:]))
        for row, seed in enumerate(seeds):
            generator = torch.Generator(device=device).manual_seed(seed)
            noise[row] = torch.randn(
                noise.shape[1:], generator=generator, device=device, dtype=noise.dtype
            )
        image[idx] = image[idx] + noise * sigma

    idx = _indices(parameters.brightness != 1, device)
    if idx.numel():
        image[idx] = image[idx] * _values(parameters.brightness, idx, image)

    idx = _indices(parameters.contrast != 1, device)
    if idx.numel():
        selected = image[idx]
        lo, hi, mean, _ = _channel_stats(selected)
        factor = _values(parameters.contrast, idx, image)
        image[idx] = torch.clamp((selected - mean) * factor + mean, min=lo, max=hi)

    idx = _indices(parameters.gamma != 1, device)
    if idx.numel():
        image[idx] = _gamma(
            image[idx],
            gamma=_values(parameters.gamma, idx, image),
            inverted=_values(parameters.gamma_inverted, idx, image).bool(),
            retain_stats=parameters.gamma_retain_stats,
        )
    return AugmentedBatch(image=image, label=label, weights=weights)


def _gamma(
    x: torch.Tensor, *, gamma: torch.Tensor, inverted: torch.Tensor, retain_stats: bool
) -> torch.Tensor:
    """Gamma on per-channel min-max normalized intensities, mapped back to the original range."""
    lo, hi, mean, std = _channel_stats(x)
    span = hi - lo
    unit = ((x - lo) / torch.where(span > 0, span, 1.0)).clamp(0, 1)
    # Inverting the image, applying gamma and inverting back is gamma on 1 - unit, mirrored.
    out = torch.where(inverted, hi - (1 - unit).pow(gamma) * span, lo + unit.pow(gamma) * span)
    if retain_stats:
        _, _, new_mean, new_std = _channel_stats(out)
        out = (out - new_mean) / new_std.clamp_min(_EPS) * std + mean
    return out


class Augmenter:
    """Seeded sampling plus application: ``augmenter(image=..., label=...)`` per batch.

    Example:
        >>> augmenter = Augmenter(AugmentationConfig(mirror_axes=(1, 2)), seed=0)
        >>> image, label, weights = augmenter(image=batch_image, label=batch_label)

    Attributes:
        config: the options.
        last_parameters: the parameters of the most recent call (for logging/debugging).
    """

    def __init__(self, config: AugmentationConfig, seed: int) -> None:
        self.config = config
        self._generator = torch.Generator(device="cpu").manual_seed(seed)
        self.last_parameters: AugmentationParameters | None = None

    def __call__(
        self,
        *,
        image: torch.Tensor,
        label: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> AugmentedBatch:
        """Draw parameters for this batch (on the CPU) and apply them on the batch's device."""
        self.last_parameters = sample_parameters(
            self.config,
            batch_size=image.shape[0],
            spatial_dims=image.dim() - 2,
            generator=self._generator,
        )
        return apply(self.last_parameters, image=image, label=label, weights=weights)
