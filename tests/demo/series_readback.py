"""Independent read-back of a written DICOM series for the demo tests (pydicom only).

Deliberately not ``medseg.io.dicom``: the writer is checked against first principles (sort by
position along the normal, LPS -> RAS by negating x and y), not against the reader it feeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom


@dataclass
class ReadBack:
    """Voxels in HU (``[i, j, k]``), RAS affine and the datasets in slice order."""

    array: np.ndarray
    affine_ras: np.ndarray
    datasets: list[pydicom.Dataset]


def read_series(paths: Sequence[Path]) -> ReadBack:
    """Read every file, sort along the slice normal, rescale, and build the RAS affine."""
    datasets = [pydicom.dcmread(path) for path in paths]
    orientation = np.array(datasets[0].ImageOrientationPatient, dtype=np.float64)
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    positions = np.array([ds.ImagePositionPatient for ds in datasets], dtype=np.float64)
    order = np.argsort(positions @ normal)
    datasets = [datasets[n] for n in order]
    positions = positions[order]
    row_spacing, column_spacing = (float(v) for v in datasets[0].PixelSpacing)
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row * column_spacing
    affine_lps[:3, 1] = col * row_spacing
    if len(datasets) > 1:
        affine_lps[:3, 2] = (positions[-1] - positions[0]) / (len(datasets) - 1)
    else:
        affine_lps[:3, 2] = normal * float(datasets[0].SliceThickness)
    affine_lps[:3, 3] = positions[0]
    slices = [
        ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        for ds in datasets
    ]
    array = np.stack([s.T for s in slices], axis=-1)
    return ReadBack(array, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps, datasets)
