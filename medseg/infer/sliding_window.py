"""Sliding-window prediction with Gaussian importance weights (for validation and inference).

Windows of the network's patch size step across the volume with a configurable overlap;
each window's softmax is weighted by a Gaussian centred in the window (sigma = 1/8 of the
window per axis) so window borders, where the network sees least context, count least.
Optional mirroring test-time augmentation averages the softmax over all flips of the chosen
axes. Region-based networks (``activation="sigmoid"``, see ``medseg.regions``) give one
independent sigmoid probability per region instead of a softmax over classes; weighting and
averaging are the same. Volumes smaller than a window are padded with zeros (the normalized
background value) and cropped back.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_importance(
    patch_size: Sequence[int], *, sigma_scale: float = 0.125, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Separable Gaussian weights of shape ``patch_size``, 1 at the centre, never 0."""
    weights = torch.ones((), device=device)
    for axis, size in enumerate(patch_size):
        coordinates = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
        profile = torch.exp(-(coordinates**2) / (2 * (size * sigma_scale) ** 2))
        shape = [1] * len(patch_size)
        shape[axis] = size
        weights = weights * profile.reshape(shape)
    weights = weights / weights.max()
    smallest = weights[weights > 0].min()
    return torch.clamp(weights, min=float(smallest))


def window_starts(size: int, patch: int, *, overlap: float, placement: str = "even") -> list[int]:
    """Start indices along one axis so windows cover ``size`` with at least ``overlap``.

    ``placement="even"`` (default, as nnU-Net) spreads the windows evenly over the axis;
    ``"monai"`` steps ``int(patch * (1 - overlap))`` from the start and clamps the last window to
    the end, as MONAI's ``sliding_window_inference`` does (for results comparable with MONAI).
    """
    if size <= patch:
        return [0]
    if placement == "monai":
        interval = max(1, int(patch * (1.0 - overlap)))
        count = math.ceil((size - patch) / interval) + 1
        return sorted({min(i * interval, size - patch) for i in range(count)})
    step = max(1.0, patch * (1.0 - overlap))
    count = math.ceil((size - patch) / step) + 1
    return [round(i * (size - patch) / (count - 1)) for i in range(count)]


def _softmax_in_place(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the class axis (1) computed in the logits' own memory."""
    logits -= logits.amax(dim=1, keepdim=True)
    logits.exp_()
    logits /= logits.sum(dim=1, keepdim=True)
    return logits


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softmax": _softmax_in_place,
    "sigmoid": torch.sigmoid_,
}
"""How float32 logits ``(B, K, *patch)`` become probabilities, in the logits' memory (they are
overwritten): a softmax over classes, or a sigmoid per region channel. With 118 classes one
window's logits are 400 MB, so a copy would count."""

BATCH_OUTPUT_BYTES = 256 * 2**20
"""A batch of windows holds fewer windows when its float32 output would pass this size (118
classes over a 96^3 window: 400 MB a window), beside the network's own activations."""


def windows_per_call(batch_size: int, num_classes: int, patch_size: Sequence[int]) -> int:
    """``batch_size``, or fewer (at least 1) so that a batch's output stays within
    :data:`BATCH_OUTPUT_BYTES`: with many classes a larger batch only adds memory, the CPU
    is as busy with one window."""
    window_bytes = 4 * num_classes * math.prod(patch_size)
    return max(1, min(batch_size, BATCH_OUTPUT_BYTES // window_bytes))


SLAB_CHUNK_BYTES = 64 * 2**20
"""Finished slices are handed on in float32 chunks of about this size (at least one slice), so
a row of windows' finished slices is never copied whole."""


def _forward(network: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    output = network(batch)
    if isinstance(output, list | tuple):
        output = output[0]
    return output


def sliding_window_predict(
    network: nn.Module,
    image: torch.Tensor,
    *,
    patch_size: Sequence[int],
    num_classes: int,
    overlap: float = 0.5,
    batch_size: int = 2,
    mirror_axes: Sequence[int] = (),
    sigma_scale: float = 0.125,
    on_windows: Callable[[int], None] | None = None,
    placement: str = "even",
    activation: str = "softmax",
) -> torch.Tensor:
    """Softmax probabilities ``(K, *spatial)`` of ``network`` over ``image`` ``(C, *spatial)``:
    the slabs of :func:`sliding_window_slabs` put together.

    Args:
        network: maps ``(B, C, *patch)`` to logits ``(B, K, *patch)`` (or a list, first used).
        image: preprocessed image on the device the network runs on.
        patch_size: window size (the network's training patch).
        num_classes: K.
        overlap: fraction of a window shared with its neighbour (0.5 default).
        batch_size: windows evaluated together, at most (see :func:`windows_per_call`).
        mirror_axes: spatial axes (0-based) to flip for test-time augmentation.
        sigma_scale: Gaussian sigma as a fraction of the window size.
        on_windows: called with the number of windows just evaluated (progress bars).
        placement: window placement, ``"even"`` or ``"monai"`` (see ``window_starts``).
        activation: a key of :data:`ACTIVATIONS` (``"sigmoid"`` for region outputs).
    """
    slabs = sliding_window_slabs(
        network,
        image,
        patch_size=patch_size,
        num_classes=num_classes,
        overlap=overlap,
        batch_size=batch_size,
        mirror_axes=mirror_axes,
        sigma_scale=sigma_scale,
        on_windows=on_windows,
        placement=placement,
        activation=activation,
    )
    return torch.cat([slab for _, slab in slabs], dim=len(patch_size))


def sliding_window_slabs(
    network: nn.Module,
    image: torch.Tensor,
    *,
    patch_size: Sequence[int],
    num_classes: int,
    overlap: float = 0.5,
    batch_size: int = 2,
    mirror_axes: Sequence[int] = (),
    sigma_scale: float = 0.125,
    on_windows: Callable[[int], None] | None = None,
    placement: str = "even",
    activation: str = "softmax",
    axis: int = -1,
    accumulator_dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[int, torch.Tensor]]:
    """The probabilities of :func:`sliding_window_predict` slab by slab along the spatial
    ``axis`` (default the last): ``(start, (K, ...))`` for the slices ``start`` to ``start +
    n`` of that axis, in order, each slice once, as soon as every window over it has run.

    Windows run row by row along ``axis``, so the running means held at any time cover one
    window's depth of it (``K x`` the other axes ``x`` the window's depth), whatever the
    volume's length along it; ``accumulator_dtype=torch.float16`` halves them (the means stay
    within [0, 1], so they lose about 1e-3; the slabs are float32 either way). Other arguments
    as :func:`sliding_window_predict`.
    """
    to_probabilities = ACTIVATIONS[activation]
    batch_size = windows_per_call(batch_size, num_classes, patch_size)
    spatial = tuple(image.shape[1:])
    axis = range(len(spatial))[axis]
    padding = [max(0, p - s) for p, s in zip(patch_size, spatial, strict=True)]
    if any(padding):
        pad = [amount for p in reversed(padding) for amount in (p // 2, p - p // 2)]
        image = F.pad(image, pad)
    padded = tuple(image.shape[1:])
    importance = gaussian_importance(patch_size, sigma_scale=sigma_scale, device=image.device)
    importance = importance.movedim(axis, -1)
    starts = [
        window_starts(s, p, overlap=overlap, placement=placement)
        for s, p in zip(padded, patch_size, strict=True)
    ]
    keep = [slice(p // 2, p // 2 + s) for p, s in zip(padding, spatial, strict=True)]
    keep.append(keep.pop(axis))  # the means keep the streaming axis last
    depth = patch_size[axis]
    others = [n for i, n in enumerate(padded) if i != axis]
    other_starts = [s for i, s in enumerate(starts) if i != axis]
    flips = [
        axes for r in range(len(mirror_axes) + 1) for axes in itertools.combinations(mirror_axes, r)
    ]
    # Gaussian-weighted means (and the weights' sums) over the slices [low, low + depth)
    means = torch.zeros((num_classes, *others, depth), device=image.device, dtype=accumulator_dtype)
    weight_sum = torch.zeros((*others, depth), device=image.device)
    low = 0
    rows = starts[axis]
    with torch.inference_mode():
        for row, start in enumerate(rows):
            if start > low:  # slices before this row's start are complete
                yield from _complete(means, low, start, keep, axis)
                _shift(means, weight_sum, start - low)
                low = start
            corners = [(*c[:axis], start, *c[axis:]) for c in itertools.product(*other_starts)]
            for first in range(0, len(corners), batch_size):
                windows = [
                    tuple(slice(c, c + p) for c, p in zip(corner, patch_size, strict=True))
                    for corner in corners[first : first + batch_size]
                ]
                batch = torch.stack([image[(slice(None), *w)] for w in windows])
                probabilities = _mean_over_flips(network, batch, flips, to_probabilities)
                for window, probability in zip(windows, probabilities, strict=True):
                    local = (
                        *(w for i, w in enumerate(window) if i != axis),
                        slice(start - low, start - low + depth),
                    )
                    # the weighted mean so far, updated in place (a view): it stays within
                    # [0, 1], so float16 keeps its precision where the Gaussian weights are tiny
                    mean = means[(slice(None), *local)]
                    weight_sum[local] += importance
                    change = probability.movedim(axis + 1, -1)  # overwritten: no copy
                    mean.add_(change.sub_(mean).mul_(importance / weight_sum[local]))
                    del change
                del probabilities
                if on_windows:
                    on_windows(len(windows))
            if row == len(rows) - 1:
                yield from _complete(means, low, padded[axis], keep, axis)


def _mean_over_flips(
    network: nn.Module,
    batch: torch.Tensor,
    flips: Sequence[tuple[int, ...]],
    to_probabilities: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Probabilities ``(B, K, *patch)`` of ``batch``, averaged over the ``flips`` (spatial axes
    flipped in, then back); one output's worth of memory beside the network's own."""
    total: torch.Tensor | None = None
    for axes in flips:
        dims = [a + 2 for a in axes]
        logits = _forward(network, torch.flip(batch, dims) if dims else batch).float()
        probabilities = to_probabilities(logits)
        del logits
        if dims:
            probabilities = torch.flip(probabilities, dims)
        if total is None:
            # the network's next call may reuse its output memory (an exported predictor's)
            total = probabilities.clone() if len(flips) > 1 and not dims else probabilities
        else:
            total += probabilities
        del probabilities
    assert total is not None  # flips always hold the identity ()
    if len(flips) > 1:
        total /= len(flips)
    return total


def _complete(
    means: torch.Tensor,
    low: int,
    high: int,
    keep: Sequence[slice],
    axis: int,
) -> Iterator[tuple[int, torch.Tensor]]:
    """The finished slices ``[low, high)`` of the means, without the padding, with the
    streaming axis back in its place."""
    first, last = max(low, keep[-1].start), min(high, keep[-1].stop)
    slice_bytes = 4 * means[0].numel() // means.shape[-1] * means.shape[0]
    chunk = max(1, SLAB_CHUNK_BYTES // slice_bytes)
    for start in range(first, last, chunk):
        stop = min(last, start + chunk)
        part = (slice(None), *keep[:-1], slice(start - low, stop - low))
        slab = means[part].to(torch.float32, copy=True)
        yield start - keep[-1].start, slab.movedim(-1, axis + 1)


def _shift(means: torch.Tensor, weight_sum: torch.Tensor, by: int) -> None:
    """Move the means and weights ``by`` slices towards the start of their last axis (in
    place, no copy of them: in steps of at most ``by`` slices, whose source and destination
    never overlap), zeros after."""
    for held in (means, weight_sum):
        depth = held.shape[-1]
        for first in range(0, depth - by, by):
            width = min(by, depth - by - first)
            held[..., first : first + width] = held[..., first + by : first + by + width]
        held[..., max(0, depth - by) :] = 0


def predict_probabilities(
    network: nn.Module,
    image: torch.Tensor,
    *,
    patch_size: Sequence[int],
    num_classes: int,
    overlap: float = 0.5,
    batch_size: int = 2,
    mirror: bool = False,
    mirror_axes: Sequence[int] | None = None,
    slice_axis: int | None = None,
    on_windows: Callable[[int], None] | None = None,
    activation: str = "softmax",
) -> torch.Tensor:
    """Softmax ``(K, X, Y, Z)`` of a 3D network, or of a 2D network slice by slice: the slabs
    of :func:`probability_slabs` put together.

    ``slice_axis`` (2D networks) is the spatial axis the slices are perpendicular to. With
    ``mirror``, the softmax is averaged over flips of ``mirror_axes`` (volume axes; default all):
    only axes the network was trained to see mirrored should be flipped. ``activation``:
    see :func:`sliding_window_predict`.
    """
    axis = 2 if slice_axis is None else slice_axis
    slabs = probability_slabs(
        network,
        image,
        patch_size=patch_size,
        num_classes=num_classes,
        overlap=overlap,
        batch_size=batch_size,
        mirror=mirror,
        mirror_axes=mirror_axes,
        slice_axis=slice_axis,
        on_windows=on_windows,
        activation=activation,
        axis=axis,
    )
    return torch.cat([slab for _, slab in slabs], dim=axis + 1)


def probability_slabs(
    network: nn.Module,
    image: torch.Tensor,
    *,
    patch_size: Sequence[int],
    num_classes: int,
    overlap: float = 0.5,
    batch_size: int = 2,
    mirror: bool = False,
    mirror_axes: Sequence[int] | None = None,
    slice_axis: int | None = None,
    on_windows: Callable[[int], None] | None = None,
    activation: str = "softmax",
    axis: int = 2,
    accumulator_dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[int, torch.Tensor]]:
    """The probabilities of :func:`predict_probabilities` slab by slab along the spatial
    ``axis``, in order (see :func:`sliding_window_slabs`): a 3D network's as its windows
    finish (``accumulator_dtype``: see :func:`sliding_window_slabs`), a 2D network's slice by slice
    when ``axis`` is its ``slice_axis`` (otherwise as one slab of the whole volume)."""
    allowed = (0, 1, 2) if mirror_axes is None else tuple(mirror_axes)
    windows = functools.partial(
        sliding_window_slabs,
        network,
        patch_size=patch_size,
        num_classes=num_classes,
        overlap=overlap,
        batch_size=batch_size,
        on_windows=on_windows,
        activation=activation,
    )
    if slice_axis is None:
        mirrored = allowed if mirror else ()
        yield from windows(
            image, mirror_axes=mirrored, axis=axis, accumulator_dtype=accumulator_dtype
        )
        return
    in_plane = [a for a in range(3) if a != slice_axis]
    plane_axes = tuple(in_plane.index(a) for a in allowed if a != slice_axis) if mirror else ()

    def plane(index: int) -> torch.Tensor:
        section = image.select(slice_axis + 1, index)
        return torch.cat([slab for _, slab in windows(section, mirror_axes=plane_axes)], dim=2)

    count = image.shape[slice_axis + 1]
    if axis == slice_axis:
        for index in range(count):
            yield index, plane(index).unsqueeze(axis + 1)
    else:
        yield 0, torch.stack([plane(index) for index in range(count)], dim=slice_axis + 1)
