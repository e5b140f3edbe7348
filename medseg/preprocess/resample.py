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

from collections.abc import Sequence

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
    return tuple(
        max(1, round(float(n * s / t))) for n, s, t in zip(shape, spacing, target, strict=True)
    )  # type: ignore[return-value]


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
    return array[(..., *indices)]


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
            result = F.interpolate(
                tensor, size=tuple(new_shape), mode="trilinear", align_corners=False
            )
        result = result[0].numpy()
    else:
        zoom = [1.0] + [n / o for n, o in zip(new_shape, channels.shape[1:], strict=True)]
        result = ndimage.zoom(channels, zoom, order=order, mode="nearest", grid_mode=True)
    return result if array.ndim == 4 else result[0]


def resample_labels(
    labels: np.ndarray,
    new_shape: Sequence[int],
    *,
    mode: LabelResampling = LabelResampling.NEAREST,
) -> np.ndarray:
    """Resample a label map; the output holds only values present in the input."""
    if tuple(labels.shape) == tuple(new_shape) or mode is LabelResampling.NEAREST:
        return resample_nearest(labels, new_shape)
    values = np.unique(labels)
    best = np.full(tuple(new_shape), -1.0, np.float32)
    result = np.zeros(tuple(new_shape), labels.dtype)
    for value in values:
        mask = resample_image((labels == value).astype(np.float32), new_shape, order=1)
        better = mask > best
        best[better] = mask[better]
        result[better] = value
    return result
