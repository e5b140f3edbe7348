"""Crop to the non-zero region and normalize intensities (CT vs MR), channel by channel."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import EllipsisType

import numpy as np

from medseg.preprocess.config import NormalizationScheme

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def as_box(pairs: Sequence[Sequence[int]]) -> Box:
    """A ``Box`` from three ``(lo, hi)`` pairs (e.g. lists read back from JSON)."""
    (lo0, hi0), (lo1, hi1), (lo2, hi2) = pairs
    return (lo0, hi0), (lo1, hi1), (lo2, hi2)


def nonzero_box(image: np.ndarray) -> Box:
    """Bounding box ``((lo, hi), ...)`` (hi exclusive) of voxels that are non-zero in any channel.

    Holes inside the region (zeros surrounded by signal) do not shrink it. An all-zero image
    keeps its full extent.
    """
    channels = image if image.ndim == 4 else image[np.newaxis]
    mask = np.any(channels != 0, axis=0)
    if not mask.any():
        return as_box([(0, n) for n in mask.shape])
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        box.append((int(present[0]), int(present[-1]) + 1))
    return as_box(box)


def channels_first(array: np.ndarray) -> np.ndarray:
    """A volume's voxels as ``(C, X, Y, Z)``: a 3D array gets one channel, a 4D array (channels
    on its last axis, the ``Volume`` convention) has that axis moved to the front."""
    if array.ndim == 3:
        return array[np.newaxis]
    return np.moveaxis(array, -1, 0)


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    """The part of ``array``'s last three axes inside ``box``."""
    index: tuple[EllipsisType | slice, ...] = (..., *(slice(lo, hi) for lo, hi in box))
    return array[index]


def uncrop(
    array: np.ndarray, box: Box, full_shape: tuple[int, int, int], *, fill: float = 0
) -> np.ndarray:
    """Place a cropped array back into a ``full_shape`` array filled with ``fill``."""
    full = np.full((*array.shape[:-3], *full_shape), fill, dtype=array.dtype)
    index: tuple[EllipsisType | slice, ...] = (..., *(slice(lo, hi) for lo, hi in box))
    full[index] = array
    return full


@dataclass(frozen=True)
class Normalization:
    """Resolved normalization of one dataset (CT) or rule (z-score per case)."""

    scheme: NormalizationScheme
    clip_low: float | None = None
    clip_high: float | None = None
    mean: float | None = None
    std: float | None = None


def normalize(
    image: np.ndarray, normalization: Normalization
) -> tuple[np.ndarray, dict[str, float]]:
    """Normalize ``image`` (float32 out) and return the parameters used for this case."""
    image = image.astype(np.float32, copy=True)
    if normalization.scheme is NormalizationScheme.CT:
        assert normalization.mean is not None and normalization.std is not None
        np.clip(image, normalization.clip_low, normalization.clip_high, out=image)
        image -= np.float32(normalization.mean)
        image /= np.float32(max(normalization.std, 1e-8))
        return image, {"mean": normalization.mean, "std": normalization.std}
    if normalization.scheme is NormalizationScheme.ZSCORE:
        mean, std = float(image.mean()), float(image.std())
        image -= np.float32(mean)
        if std > 1e-8:
            image /= np.float32(std)
        return image, {"mean": mean, "std": std}
    return image, {}


def normalize_channels(
    image: np.ndarray, normalizations: Sequence[Normalization]
) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Normalize each channel of a ``(C, X, Y, Z)`` image with its own normalization (one per
    channel, in order)."""
    results = [
        normalize(channel, normalization)
        for channel, normalization in zip(image, normalizations, strict=True)
    ]
    return np.stack([array for array, _ in results]), [parameters for _, parameters in results]
