"""Dense-CRF post-processing: mean-field inference of a fully connected CRF on class
probabilities, in the style of Krähenbühl & Koltun (2011), in 2D or 3D, with torch ops only.

Energy: unary ``-log p`` plus a Potts penalty between every pair of voxels, weighted by two
Gaussian kernels of their distance in millimetres (so anisotropic grids are handled):

* smoothness: ``w2 exp(-|p_i - p_j|^2 / 2 θγ^2)``, applied exactly as separable 1D
  convolutions (truncated at 3 sigma);
* appearance (bilateral): ``w1 exp(-|p_i - p_j|^2 / 2 θα^2 - |I_i - I_j|^2 / 2 θβ^2)``,
  applied by message passing over a local window (an ellipsoid of 2 θα, at most
  ``max_window_radius`` voxels per axis), one pair of opposite offsets at a time.

Both kernels are normalised symmetrically, as in the reference implementation:
``n_i = (Σ_{j≠i} k_ij)^(-1/2)`` and the message to voxel ``i`` is ``n_i Σ_{j≠i} k_ij n_j Q_j``.
A voxel whose neighbourhood fully agrees on a class then gains ``w`` nats for it (exactly,
where the kernel sums are uniform), whatever the voxel spacing, the dimension or the kernel
size: the weights compare directly with the unary (``-log p``), and the same physical problem
gives nearly the same answer at any sampling. The voxel itself is left out of its messages:
it cannot vote for its own label.

Update (parallel mean field, Potts compatibility)::

    Q ← softmax(log p + w1 · bilateral(Q) + w2 · smoothness(Q))

which is ``softmax(-U - Σ_m w_m (k_m ⊗ Q) μ)`` with ``μ(l, l') = [l ≠ l']`` up to a term that
is the same for every class.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Protocol, TypeVar

import numpy as np
import torch

from medseg.errors import CrfInputError
from medseg.infer.options import CrfSettings

PROBABILITY_FLOOR = 1e-6  # unary at most -log(1e-6) = 13.8 nats: no infinities
SPATIAL_TRUNCATE = 3.0  # smoothness kernel: taps up to 3 sigma
BILATERAL_TRUNCATE = 2.0  # bilateral window: offsets up to 2 sigma (ellipsoid), capped per axis
CHUNK_VOXELS = 1 << 20  # bilateral weights are computed for at most this many voxels at once
WEIGHT_CACHE_BYTES = 256 << 20  # bilateral weights kept between iterations (per call)
SUM_TOLERANCE = 1e-2  # probabilities must sum to 1 within this (float16 storage is ~1e-3)
NORM_EPSILON = 1e-12

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def dense_crf(
    probabilities: ArrayT,
    image: np.ndarray | torch.Tensor,
    *,
    spacing_mm: Sequence[float],
    settings: CrfSettings | None = None,
    slice_axis: int | None = None,
) -> ArrayT:
    """Probabilities refined by mean-field inference of a fully connected CRF.

    Runs on the device of ``probabilities`` (a numpy array runs on the CPU).

    Args:
        probabilities: ``(K, *spatial)`` class probabilities (summing to 1 over K), spatial
            2D or 3D.
        image: ``(C, *spatial)`` normalised image channels on the same grid.
        spacing_mm: voxel spacing per spatial axis.
        settings: kernel widths and weights (default ``CrfSettings()``).
        slice_axis: spatial axis the slices are perpendicular to when ``settings.per_slice``
            (default: the coarsest axis, the last one when isotropic). Ignored for 2D inputs.

    Returns:
        float32 probabilities of the same shape and kind (numpy array or tensor), summing to 1
        over K; the input (as float32) when ``settings.iterations`` is 0.

    Raises:
        CrfInputError: shapes that do not match, a spacing of the wrong length or not
            positive, probabilities that do not sum to 1, non-finite values.

    Example:
        >>> refined = dense_crf(probabilities, image, spacing_mm=(1.0, 1.0, 1.0))
        >>> labels = refined.argmax(0)
    """
    settings = settings or CrfSettings()
    probs = torch.as_tensor(probabilities)
    device = probs.device
    probs = probs.to(torch.float32)
    pixels = torch.as_tensor(image).to(device=device, dtype=torch.float32)
    spacing = _check_inputs(probs, pixels, spacing_mm)
    if settings.iterations == 0 or probs.shape[0] == 1:
        refined = probs
    else:
        with torch.no_grad():
            refined = _refine(probs, pixels, spacing, settings, slice_axis)
    return refined.cpu().numpy() if isinstance(probabilities, np.ndarray) else refined


def _check_inputs(
    probabilities: torch.Tensor, image: torch.Tensor, spacing_mm: Sequence[float]
) -> list[float]:
    spatial = tuple(probabilities.shape[1:])
    if len(spatial) not in (2, 3):
        shape = tuple(probabilities.shape)
        raise CrfInputError(f"probabilities must be (K, X, Y) or (K, X, Y, Z), got shape {shape}")
    if image.ndim != probabilities.ndim or tuple(image.shape[1:]) != spatial:
        raise CrfInputError(
            f"image shape {tuple(image.shape)} does not match probabilities "
            f"{tuple(probabilities.shape)}: expected (C, {', '.join(map(str, spatial))})"
        )
    spacing = [float(s) for s in spacing_mm]
    if len(spacing) != len(spatial):
        raise CrfInputError(
            f"spacing_mm has {len(spacing)} values for {len(spatial)} spatial axes: {spacing}"
        )
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise CrfInputError(f"spacing_mm must be positive and finite, got {spacing}")
    if min(spatial) < 1 or probabilities.shape[0] < 1 or image.shape[0] < 1:
        raise CrfInputError(f"empty input: probabilities {tuple(probabilities.shape)}")
    for name, values in (("probabilities", probabilities), ("image", image)):
        if not bool(torch.isfinite(values).all()):
            raise CrfInputError(f"{name} contain NaN or infinite values")
    if bool((probabilities < 0).any()):
        raise CrfInputError("probabilities must not be negative (logits given?)")
    error = float((probabilities.sum(0) - 1).abs().max())
    if error > SUM_TOLERANCE:
        raise CrfInputError(f"probabilities must sum to 1 over the classes (off by {error:.3g})")
    return spacing


def _refine(
    probabilities: torch.Tensor,
    image: torch.Tensor,
    spacing: list[float],
    settings: CrfSettings,
    slice_axis: int | None,
) -> torch.Tensor:
    """Move the slices into a batch axis when per slice, run mean field, move them back."""
    if settings.per_slice and probabilities.ndim == 4:
        axis = _default_slice_axis(spacing) if slice_axis is None else slice_axis
        if axis not in (0, 1, 2):
            raise CrfInputError(f"slice_axis must be 0, 1 or 2, got {axis}")
        in_plane = [s for a, s in enumerate(spacing) if a != axis]
        batched = _mean_field(
            probabilities.movedim(axis + 1, 0),
            image.movedim(axis + 1, 0),
            in_plane,
            settings,
        )
        return batched.movedim(0, axis + 1).contiguous()
    return _mean_field(probabilities[None], image[None], spacing, settings)[0]


def _default_slice_axis(spacing: list[float]) -> int:
    """The plan's rule: the coarsest axis, the last one when (nearly) isotropic."""
    return int(np.argmax(spacing)) if max(spacing) > min(spacing) * 1.01 else len(spacing) - 1


def _mean_field(
    probabilities: torch.Tensor, image: torch.Tensor, spacing: list[float], settings: CrfSettings
) -> torch.Tensor:
    """Mean-field iterations on ``(B, K, *spatial)`` (B independent problems)."""
    log_p = probabilities.clamp_min(PROBABILITY_FLOOR).log()
    q = torch.softmax(log_p, dim=1)
    kernels: list[_Kernel] = []
    if settings.spatial_weight > 0:
        kernels.append(_SmoothnessKernel(q.shape, spacing, settings, q.device))
    if settings.bilateral_weight > 0:
        kernels.append(_BilateralKernel(image, spacing, settings))
    for _ in range(settings.iterations):
        energy = log_p.clone()
        for kernel in kernels:
            energy.add_(kernel.message(q), alpha=kernel.weight)
        q = torch.softmax(energy, dim=1)
    return q


def _normaliser(neighbour_sum: torch.Tensor) -> torch.Tensor:
    """``(Σ_{j≠i} k_ij)^(-1/2)``; a voxel without neighbours gets no messages."""
    return neighbour_sum.clamp_min(NORM_EPSILON).rsqrt_().mul_(neighbour_sum > NORM_EPSILON)


class _Kernel(Protocol):
    """A pairwise kernel of the mean-field update: its weight and its message to ``q``."""

    weight: float

    def message(self, q: torch.Tensor) -> torch.Tensor: ...


class _SmoothnessKernel:
    """Gaussian of the distance in mm, by separable 1D convolutions per spatial axis."""

    def __init__(
        self,
        shape: torch.Size,
        spacing: list[float],
        settings: CrfSettings,
        device: torch.device,
    ) -> None:
        self.weight = settings.spatial_weight
        self.taps = [_gaussian_taps(settings.spatial_sigma_mm / s) for s in spacing]
        ones = torch.ones((shape[0], 1, *shape[2:]), device=device)
        self.norm = _normaliser(self._filter(ones).sub_(1.0))

    def message(self, q: torch.Tensor) -> torch.Tensor:
        weighted = q * self.norm
        return self._filter(weighted).sub_(weighted).mul_(self.norm)

    def _filter(self, values: torch.Tensor) -> torch.Tensor:
        """Gaussian filter (centre tap 1, zero outside the grid) over the spatial axes."""
        for axis, taps in enumerate(self.taps):
            values = _filter_axis(values, axis + 2, taps)
        return values


def _gaussian_taps(sigma_voxels: float) -> list[float]:
    """Kernel values at 1, 2, ... voxels (the centre is 1), up to ``SPATIAL_TRUNCATE`` sigma."""
    radius = max(1, math.ceil(SPATIAL_TRUNCATE * sigma_voxels))
    return [math.exp(-(t**2) / (2 * sigma_voxels**2)) for t in range(1, radius + 1)]


def _filter_axis(values: torch.Tensor, dim: int, taps: list[float]) -> torch.Tensor:
    """Symmetric 1D filter along ``dim`` by shifted in-place accumulation."""
    result = values.clone()
    length = values.shape[dim]
    for shift, tap in enumerate(taps, start=1):
        if shift >= length:
            break
        head = values.narrow(dim, 0, length - shift)
        tail = values.narrow(dim, shift, length - shift)
        result.narrow(dim, shift, length - shift).add_(head, alpha=tap)
        result.narrow(dim, 0, length - shift).add_(tail, alpha=tap)
    return result


class _BilateralKernel:
    """Appearance kernel over a truncated local window, one pair of opposite offsets at a time.

    For an offset ``o`` the weights ``k(x, x + o)`` over the overlap of the grid with its
    shifted copy serve both directions (``x`` receives from ``x + o`` and ``x + o`` from
    ``x``). They are computed in slabs of the first spatial axis (blocks of at most
    ``CHUNK_VOXELS`` weights) and the messages accumulate in place, so memory stays a few
    volumes whatever the window. The weights depend on the image only: the first
    ``WEIGHT_CACHE_BYTES`` of them are kept for the next iterations, the rest recomputed.
    """

    def __init__(self, image: torch.Tensor, spacing: list[float], settings: CrfSettings) -> None:
        self.weight = settings.bilateral_weight
        # scaled so that the intensity term is just the squared difference
        self.features = image * (1.0 / (math.sqrt(2.0) * settings.intensity_sigma))
        offsets = _window_offsets(spacing, settings.bilateral_sigma_mm, settings.max_window_radius)
        self.blocks = _blocks(offsets, self.features.shape)
        self.cache: dict[int, torch.Tensor] = {}
        self.cache_left = WEIGHT_CACHE_BYTES
        shape = self.features.shape
        ones = torch.ones((shape[0], 1, *shape[2:]), device=image.device)
        self.norm = _normaliser(self._accumulate(ones))

    def message(self, q: torch.Tensor) -> torch.Tensor:
        return self._accumulate(q * self.norm).mul_(self.norm)

    def _accumulate(self, values: torch.Tensor) -> torch.Tensor:
        """``Σ_{j≠i} k_ij values_j`` over the window."""
        result = torch.zeros_like(values)
        for index, (here, there, spatial_term) in enumerate(self.blocks):
            weights = self.cache.get(index)
            if weights is None:
                weights = self._weights(here, there, spatial_term)
                size = weights.numel() * weights.element_size()
                if size <= self.cache_left:
                    self.cache[index] = weights
                    self.cache_left -= size
            result[here].addcmul_(weights, values[there])
            result[there].addcmul_(weights, values[here])
        return result

    def _weights(self, here: tuple, there: tuple, spatial_term: float) -> torch.Tensor:
        difference = self.features[here] - self.features[there]
        if difference.shape[1] > 1:
            squared = difference.square_().sum(dim=1, keepdim=True)
            return squared.add_(spatial_term).neg_().exp_()
        # one channel: -(d^2) - spatial term in one pass
        exponent = torch.addcmul(
            difference.new_tensor(-spatial_term), difference, difference, value=-1.0
        )
        return exponent.exp_()


def _blocks(
    offsets: list[tuple[tuple[int, ...], float]], shape: torch.Size
) -> list[tuple[tuple, tuple, float]]:
    """``(here, there, spatial term)`` index tuples of ``(B, C, *spatial)`` tensors: for each
    offset, the overlap of the grid with its shifted copy, in slabs of the first spatial axis
    of at most ``CHUNK_VOXELS`` voxels (all B problems together)."""
    batch, spatial = shape[0], tuple(shape[2:])
    blocks = []
    for offset, spatial_term in offsets:
        if any(abs(o) >= n for o, n in zip(offset, spatial, strict=True)):
            continue
        here = [slice(max(0, -o), n - max(0, o)) for o, n in zip(offset, spatial, strict=True)]
        there = [slice(max(0, o), n - max(0, -o)) for o, n in zip(offset, spatial, strict=True)]
        rows = here[0].stop - here[0].start
        per_row = batch * math.prod(s.stop - s.start for s in here[1:])
        step = max(1, CHUNK_VOXELS // per_row)
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            blocks.append(
                (
                    (..., slice(here[0].start + start, here[0].start + stop), *here[1:]),
                    (..., slice(there[0].start + start, there[0].start + stop), *there[1:]),
                    spatial_term,
                )
            )
    return blocks


def _window_offsets(
    spacing: list[float], sigma_mm: float, max_radius: int
) -> list[tuple[tuple[int, ...], float]]:
    """Half of the window's offsets (the other half are their opposites) with their spatial
    exponent ``|o|^2 / 2 sigma^2`` in mm.

    The window is the ellipsoid ``|o|_mm <= BILATERAL_TRUNCATE sigma``, cut at ``max_radius``
    voxels per axis (the nearest neighbours along every axis are always in it).
    """
    reach_mm = BILATERAL_TRUNCATE * sigma_mm
    radii = [min(max_radius, max(1, math.floor(reach_mm / s + 1e-6))) for s in spacing]
    offsets = []
    for offset in itertools.product(*(range(-r, r + 1) for r in radii)):
        first = next((o for o in offset if o != 0), 0)
        if first <= 0:  # the zero offset, or the opposite of one already listed
            continue
        squared_mm = sum((o * s) ** 2 for o, s in zip(offset, spacing, strict=True))
        if squared_mm > reach_mm**2 + 1e-6 and sum(1 for o in offset if o) > 1:
            continue
        offsets.append((offset, squared_mm / (2 * sigma_mm**2)))
    return offsets
