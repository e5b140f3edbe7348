"""Resample volumes to a target spacing, and back, with one exact voxel-grid convention.

A grid of ``n`` voxels resampled to ``m`` voxels keeps the field of view: new voxel ``i``'s
centre sits at old continuous index ``(i + 0.5) * n / m - 0.5`` (torch's
``align_corners=False``). ``resampled_affine`` encodes the same mapping, so resampled arrays
stay exactly placed in world space and resampling back to ``n`` voxels inverts the mapping.

Images: order 1 (default) uses torch trilinear interpolation (fast, multi-threaded); order 0
nearest; orders 2-5 use scipy splines (slow, for those who ask). Labels are never blurred into
wrong values: nearest neighbour, or linear interpolation of each label's mask followed by
argmax ("one-hot linear", smoother boundaries, same label set).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from types import EllipsisType

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medseg.preprocess.config import LabelResampling

Shape3 = tuple[int, int, int]


def resampled_shape(
    shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]
) -> Shape3:
    """Voxel counts that cover the same field of view at ``target`` spacing (at least 1)."""
    x, y, z = (
        max(1, round(float(n * s / t))) for n, s, t in zip(shape, spacing, target, strict=True)
    )
    return x, y, z


def resampled_affine(
    affine: np.ndarray, old_shape: Sequence[int], new_shape: Sequence[int]
) -> np.ndarray:
    """Affine of the resampled grid under this module's voxel-centre convention."""
    scale = np.array(old_shape[:3], float) / np.array(new_shape[:3], float)
    index_map = np.eye(4)
    index_map[:3, :3] = np.diag(scale)
    index_map[:3, 3] = 0.5 * scale - 0.5
    return affine @ index_map


def _source_indices(old: int, new: int) -> np.ndarray:
    centres = (np.arange(new) + 0.5) * (old / new) - 0.5
    return np.clip(np.floor(centres + 0.5), 0, old - 1).astype(np.intp)


def resample_nearest(array: np.ndarray, new_shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of the last three axes (exact index gathering)."""
    spatial = array.shape[-3:]
    if tuple(spatial) == tuple(new_shape):
        return array
    indices = np.ix_(*[_source_indices(o, n) for o, n in zip(spatial, new_shape, strict=True)])
    index: tuple[EllipsisType | np.ndarray, ...] = (..., *indices)
    return array[index]


def resample_image(array: np.ndarray, new_shape: Sequence[int], *, order: int = 1) -> np.ndarray:
    """Resample an image (``(X, Y, Z)`` or ``(C, X, Y, Z)``) to ``new_shape``; float32 out."""
    channels = array if array.ndim == 4 else array[np.newaxis]
    channels = channels.astype(np.float32, copy=False)
    if tuple(channels.shape[1:]) == tuple(new_shape):
        result = channels
    elif order == 0:
        result = resample_nearest(channels, new_shape)
    elif order == 1:
        tensor = torch.from_numpy(np.ascontiguousarray(channels))[None]
        with torch.no_grad():
            interpolated = F.interpolate(
                tensor, size=tuple(new_shape), mode="trilinear", align_corners=False
            )
        result = interpolated[0].numpy()
    else:
        zoom = [1.0] + [n / o for n, o in zip(new_shape, channels.shape[1:], strict=True)]
        result = ndimage.zoom(channels, zoom, order=order, mode="nearest", grid_mode=True)
    return result if array.ndim == 4 else result[0]


def _linear_corners(old: int, new: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower/upper source indices and upper weight per output voxel (torch's clamped mapping)."""
    centres = np.clip((np.arange(new) + 0.5) * (old / new) - 0.5, 0, old - 1)
    lower = np.floor(centres).astype(np.intp)
    upper = np.minimum(lower + 1, old - 1)
    return lower, upper, (centres - lower).astype(np.float32)


def _onehot_linear(labels: np.ndarray, new_shape: Sequence[int]) -> np.ndarray:
    """Each output voxel takes the label with the largest trilinear weight among its 8 corners.

    Equal to interpolating every label's mask linearly and taking the argmax, at a fraction of
    the cost: where all corners agree (most voxels) the label is copied; elsewhere the corner
    weights are summed per label. Exact ties go to the nearest corner's label.
    """
    axes = [_linear_corners(o, n) for o, n in zip(labels.shape, new_shape, strict=True)]
    corner_labels, corner_weights = [], []
    for choice in itertools.product((0, 1), repeat=3):
        index = np.ix_(*[axes[a][choice[a]] for a in range(3)])
        corner_labels.append(labels[index])
        weight: np.ndarray = np.ones(tuple(new_shape), np.float32)
        for a in range(3):
            w = axes[a][2] if choice[a] else 1.0 - axes[a][2]
            weight = weight * w.reshape([-1 if b == a else 1 for b in range(3)])
        corner_weights.append(weight)
    result = corner_labels[0].copy()
    disagree = np.zeros(tuple(new_shape), bool)
    for other in corner_labels[1:]:
        disagree |= other != corner_labels[0]
    if disagree.any():
        candidates = np.stack([c[disagree] for c in corner_labels], axis=1)  # (N, 8)
        weights = np.stack([w[disagree] for w in corner_weights], axis=1)
        same = candidates[:, :, None] == candidates[:, None, :]
        scores = (same * weights[:, None, :]).sum(axis=2) + 1e-6 * weights  # ties: nearest
        best = np.argmax(scores, axis=1)
        result[disagree] = candidates[np.arange(len(best)), best]
    return result


def resample_labels(
    labels: np.ndarray,
    new_shape: Sequence[int],
    *,
    mode: LabelResampling = LabelResampling.ONEHOT_LINEAR,
) -> np.ndarray:
    """Resample a label map; the output holds only values present in the input."""
    if tuple(labels.shape) == tuple(new_shape):
        return labels
    if mode is LabelResampling.NEAREST:
        return resample_nearest(labels, new_shape)
    return _onehot_linear(labels, new_shape)


def linear_output_range(old: int, new: int, low: int, high: int) -> tuple[int, int]:
    """The output voxels ``[first, last)`` of a linear resampling from ``old`` to ``new`` voxels
    whose value depends on an input voxel in ``[low, high)``; every other output voxel is
    interpolated from voxels outside it."""
    lower, upper, _ = _linear_corners(old, new)
    first = int(np.searchsorted(upper, low, side="left"))
    last = int(np.searchsorted(lower, high - 1, side="right"))
    return first, max(first, last)


def resample_linear_part(
    array: np.ndarray, new_shape: Sequence[int], box: Sequence[tuple[int, int]]
) -> np.ndarray:
    """The part ``box`` (output voxel ranges per axis) of ``resample_image(array, new_shape)``
    at order 1, computed from only the input voxels it needs: one linear interpolation per axis
    with torch's ``align_corners=False`` mapping (equal to the trilinear one to float rounding).
    """
    part = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    for axis, (old, new, (first, last)) in enumerate(zip(array.shape, new_shape, box, strict=True)):
        lower, upper, weight = (c[first:last] for c in _linear_corners(old, new))
        shape = [1] * array.ndim
        shape[axis] = last - first
        below = part.index_select(axis, torch.from_numpy(lower))
        above = part.index_select(axis, torch.from_numpy(upper))
        part = torch.lerp(below, above, torch.from_numpy(weight).reshape(shape))
    return part.numpy()
