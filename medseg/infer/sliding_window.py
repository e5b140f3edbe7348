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

import itertools
import math
from collections.abc import Callable, Sequence

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


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softmax": lambda logits: torch.softmax(logits, dim=1),
    "sigmoid": torch.sigmoid,
}
"""How logits ``(B, K, *patch)`` become probabilities: a softmax over classes, or a sigmoid
per region channel."""


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
    """Softmax probabilities ``(K, *spatial)`` of ``network`` over ``image`` ``(C, *spatial)``.

    Args:
        network: maps ``(B, C, *patch)`` to logits ``(B, K, *patch)`` (or a list, first used).
        image: preprocessed image on the device the network runs on.
        patch_size: window size (the network's training patch).
        num_classes: K.
        overlap: fraction of a window shared with its neighbour (0.5 default).
        batch_size: windows evaluated together.
        mirror_axes: spatial axes (0-based) to flip for test-time augmentation.
        sigma_scale: Gaussian sigma as a fraction of the window size.
        on_windows: called with the number of windows just evaluated (progress bars).
        placement: window placement, ``"even"`` or ``"monai"`` (see ``window_starts``).
        activation: a key of :data:`ACTIVATIONS` (``"sigmoid"`` for region outputs).
    """
    to_probabilities = ACTIVATIONS[activation]
    spatial = tuple(image.shape[1:])
    padding = [max(0, p - s) for p, s in zip(patch_size, spatial, strict=True)]
    if any(padding):
        pad = [amount for p in reversed(padding) for amount in (p // 2, p - p // 2)]
        image = F.pad(image, pad)
    padded = tuple(image.shape[1:])
    importance = gaussian_importance(patch_size, sigma_scale=sigma_scale, device=image.device)
    totals = torch.zeros((num_classes, *padded), device=image.device)
    weight_sum = torch.zeros(padded, device=image.device)
    starts = list(
        itertools.product(
            *[
                window_starts(s, p, overlap=overlap, placement=placement)
                for s, p in zip(padded, patch_size, strict=True)
            ]
        )
    )
    flips = [
        axes for r in range(len(mirror_axes) + 1) for axes in itertools.combinations(mirror_axes, r)
    ]
    with torch.inference_mode():
        for first in range(0, len(starts), batch_size):
            corners = starts[first : first + batch_size]
            windows = [
                tuple(slice(c, c + p) for c, p in zip(corner, patch_size, strict=True))
                for corner in corners
            ]
            batch = torch.stack([image[(slice(None), *w)] for w in windows])
            probabilities = torch.zeros(
                (len(windows), num_classes, *patch_size), device=image.device
            )
            for axes in flips:
                dims = [a + 2 for a in axes]
                flipped = torch.flip(batch, dims) if dims else batch
                logits = _forward(network, flipped).float()
                soft = to_probabilities(logits)
                probabilities += torch.flip(soft, dims) if dims else soft
            probabilities /= len(flips)
            for window, probability in zip(windows, probabilities, strict=True):
                totals[(slice(None), *window)] += probability * importance
                weight_sum[window] += importance
            if on_windows:
                on_windows(len(windows))
    result = totals / weight_sum
    if any(padding):
        crop = tuple(slice(p // 2, p // 2 + s) for p, s in zip(padding, spatial, strict=True))
        result = result[(slice(None), *crop)]
    return result


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
    """Softmax ``(K, X, Y, Z)`` of a 3D network, or of a 2D network slice by slice.

    ``slice_axis`` (2D networks) is the spatial axis the slices are perpendicular to. With
    ``mirror``, the softmax is averaged over flips of ``mirror_axes`` (volume axes; default all):
    only axes the network was trained to see mirrored should be flipped. ``activation``:
    see :func:`sliding_window_predict`.
    """
    allowed = (0, 1, 2) if mirror_axes is None else tuple(mirror_axes)
    if slice_axis is None:
        return sliding_window_predict(
            network,
            image,
            patch_size=patch_size,
            num_classes=num_classes,
            overlap=overlap,
            batch_size=batch_size,
            mirror_axes=allowed if mirror else (),
            on_windows=on_windows,
            activation=activation,
        )
    in_plane = [axis for axis in range(3) if axis != slice_axis]
    plane_axes = tuple(in_plane.index(a) for a in allowed if a != slice_axis) if mirror else ()
    planes = [
        sliding_window_predict(
            network,
            image.select(slice_axis + 1, index),
            patch_size=patch_size,
            num_classes=num_classes,
            overlap=overlap,
            batch_size=batch_size,
            mirror_axes=plane_axes,
            on_windows=on_windows,
            activation=activation,
        )
        for index in range(image.shape[slice_axis + 1])
    ]
    return torch.stack(planes, dim=slice_axis + 1)
