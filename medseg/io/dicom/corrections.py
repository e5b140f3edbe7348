"""Documented geometry corrections: gantry-tilt de-shearing and slice-spacing equalization.

Both resample with linear interpolation; integer input stays integer (values rounded), since
CT numbers carry no sub-unit information. Voxels outside the acquired field of view after a
tilt correction get the volume's minimum value (air/padding).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medseg.io.dicom.geometry import SliceLayout, StackGeometry


def correct_tilt(
    voxels: np.ndarray, stack: StackGeometry, *, pixel_spacing_mm: tuple[float, float]
) -> tuple[np.ndarray, tuple[int, int]]:
    """Shift each slice (axis 2) in-plane by its drift so the stack becomes orthogonal.

    The in-plane grid grows so that no acquired voxel is cut off (as dcm2niix does).
    ``voxels`` is indexed [i (column), j (row), k (sorted slice)]; pixel_spacing_mm is DICOM
    order (row spacing, column spacing).

    Returns:
        The corrected voxels and the (i, j) index, in the old grid, of the new grid's first
        voxel (zero or negative), for moving the affine origin.
    """
    shifts = np.stack(
        [stack.drift_row_mm / pixel_spacing_mm[1], stack.drift_col_mm / pixel_spacing_mm[0]], axis=1
    )
    low = np.floor(np.minimum(shifts.min(axis=0), 0.0) + 1e-6).astype(int)
    high = np.ceil(np.maximum(shifts.max(axis=0), 0.0) - 1e-6).astype(int)
    size_i, size_j = voxels.shape[0] + high[0] - low[0], voxels.shape[1] + high[1] - low[1]
    fill = float(voxels.min())
    corrected = np.empty((size_i, size_j, voxels.shape[2]), np.float32)
    padded = np.full((size_i, size_j), fill, np.float32)
    for k in range(voxels.shape[2]):
        padded[-low[0] : -low[0] + voxels.shape[0], -low[1] : -low[1] + voxels.shape[1]] = voxels[
            :, :, k
        ]
        ndimage.shift(
            padded, shifts[k], output=corrected[:, :, k], order=1, mode="constant", cval=fill
        )
    return _back_to_dtype(corrected, voxels.dtype), (int(low[0]), int(low[1]))


def equalize_slices(voxels: np.ndarray, stack: StackGeometry, layout: SliceLayout) -> np.ndarray:
    """Linearly interpolate slices (axis 2) from their measured to the layout's target positions."""
    source = stack.distance_mm
    targets = layout.target_distance_mm
    upper = np.clip(np.searchsorted(source, targets, side="right"), 1, len(source) - 1)
    lower = upper - 1
    weight = ((targets - source[lower]) / (source[upper] - source[lower])).astype(np.float32)
    weight = np.clip(weight, 0.0, 1.0)
    work = voxels.astype(np.float32, copy=False)
    result = work[:, :, lower] * (1.0 - weight) + work[:, :, upper] * weight
    return _back_to_dtype(result, voxels.dtype)


def _back_to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype, copy=False)
