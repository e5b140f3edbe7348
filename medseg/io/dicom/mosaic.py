"""Siemens mosaic images: one stored image that tiles all slices of a volume.

The tile count comes from the Siemens CSA image header (NumberOfImagesInMosaic), the slice
direction from its SliceNormalVector. ImagePositionPatient of a mosaic refers to the corner of
the whole mosaic, so the first tile's origin is moved by half the difference between mosaic
and tile size, as the Siemens convention requires.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset

from medseg.errors import DicomFileError
from medseg.io.dicom.geometry import slice_normal

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # nibabel.nicom announces itself as experimental
    from nibabel.nicom import csareader

if TYPE_CHECKING:
    from medseg.io.dicom.scan import FrameRecord  # scan.py imports this module

NUMBER_OF_IMAGES_IN_MOSAIC = (0x0019, 0x100A)


def mosaic_records(whole: FrameRecord, dataset: Dataset) -> list[FrameRecord]:
    """Split the record of a mosaic image into one record per tile (slice).

    Raises:
        DicomFileError: the mosaic's tiles do not fit the image.
    """
    csa = _csa_header(dataset)
    count = _tile_count(dataset, csa, whole)
    grid = math.ceil(math.sqrt(count))
    rows, columns = whole.rows // grid, whole.columns // grid
    if rows * grid != whole.rows or columns * grid != whole.columns:
        raise DicomFileError(
            whole.path, f"mosaic of {whole.rows}x{whole.columns} does not tile into {grid}x{grid}"
        )
    orientation = np.array(whole.orientation)
    row_dir, col_dir = orientation[:3], orientation[3:]
    row_spacing, column_spacing = whole.pixel_spacing_mm
    first = (
        np.array(whole.position_lps)
        + row_dir * column_spacing * (whole.columns - columns) / 2
        + col_dir * row_spacing * (whole.rows - rows) / 2
    )
    normal = _csa_normal(csa, orientation)
    step = _slice_step(dataset, whole)
    return [
        dataclasses.replace(
            whole,
            frame_index=tile,
            position_lps=_point(first + normal * step * tile),
            rows=rows,
            columns=columns,
            instance_uid=f"{whole.instance_uid}#{tile}",
            mosaic_grid=grid,
        )
        for tile in range(count)
    ]


def _point(vector: np.ndarray) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in vector)
    return x, y, z


def _csa_header(dataset: Dataset) -> dict | None:
    try:
        return csareader.get_csa_header(dataset, "image")
    except Exception:  # a damaged private header must not hide the rest of the file
        return None


def _tile_count(dataset: Dataset, csa: dict | None, whole: FrameRecord) -> int:
    count = None
    if csa is not None:
        count = csareader.get_n_mosaic(csa)
    if count is None and NUMBER_OF_IMAGES_IN_MOSAIC in dataset:
        count = int(dataset[NUMBER_OF_IMAGES_IN_MOSAIC].value)
    if not count:
        raise DicomFileError(
            whole.path, "mosaic image without NumberOfImagesInMosaic: cannot split it"
        )
    return int(count)


def _csa_normal(csa: dict | None, orientation: np.ndarray) -> np.ndarray:
    normal = csareader.get_slice_normal(csa) if csa is not None else None
    if normal is None:
        return slice_normal(orientation)
    normal = np.asarray(normal, float)
    return normal / np.linalg.norm(normal)


def _slice_step(dataset: Dataset, whole: FrameRecord) -> float:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = dataset.get(keyword)
        if value not in (None, "") and float(value) > 0:
            return float(value)
    raise DicomFileError(whole.path, "mosaic image without SpacingBetweenSlices or SliceThickness")
