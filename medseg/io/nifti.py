"""NIfTI read/write through nibabel, in the convention of ``medseg.volume``.

NIfTI-1 stores the affine (sform) as float32, so an affine written by medseg reads back as
its float32 rounding (well under 1e-4 mm for scan-sized coordinates); a file read and
written again round-trips voxels and affine bit for bit.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.errors import InvalidAffineError, NiftiError
from medseg.io.atomic import atomic_path
from medseg.volume import Volume, validate_affine

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_path(path: str | os.PathLike[str]) -> bool:
    """True when the file name ends in ``.nii`` or ``.nii.gz``."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _scaled_dtype(image: nib.Nifti1Image) -> np.dtype:
    """The dtype that holds the stored values after scl_slope/scl_inter without rounding.

    The scaling is read from the image's data proxy: once loaded, nibabel's header reports
    none (it moved the scaling to the proxy)."""
    slope = getattr(image.dataobj, "slope", None)
    inter = getattr(image.dataobj, "inter", None)
    stored = image.get_data_dtype()
    if slope is None or (slope == 1 and inter in (None, 0)):
        return np.dtype(stored)
    if float(slope).is_integer() and float(inter or 0).is_integer() and stored.kind in "iu":
        return np.dtype(np.int32)
    return np.dtype(np.float32)


def read_nifti(path: str | os.PathLike[str]) -> Volume:
    """Read a NIfTI-1/2 file (any byte order) into a ``Volume``.

    Integer data stays integer unless the header's scaling makes it fractional.

    Raises:
        NiftiError: the file is unreadable, truncated, not 3D/4D, or has an invalid affine.
    """
    path = Path(path)
    try:
        image = nib.load(str(path))
        if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
            raise NiftiError(path, f"not a NIfTI image ({type(image).__name__})")
        dtype = _scaled_dtype(image)
        array = np.asanyarray(image.dataobj).astype(dtype, copy=False)
    except NiftiError:
        raise
    except FileNotFoundError as exc:
        raise NiftiError(path, "file not found") from exc
    except Exception as exc:  # nibabel raises many types for malformed files
        raise NiftiError(path, f"cannot read NIfTI: {exc}") from exc
    while array.ndim > 3 and array.shape[-1] == 1:  # e.g. a 3D scan stored as X x Y x Z x 1
        array = array[..., 0]
    if array.ndim not in (3, 4):
        raise NiftiError(path, f"expected a 3D or 4D image, got shape {array.shape}")
    try:
        affine = validate_affine(image.affine, source=str(path))
    except InvalidAffineError as exc:
        raise NiftiError(path, str(exc)) from exc
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder not in ("=", "|"):
        array = array.astype(array.dtype.newbyteorder("="))
    metadata: dict[str, object] = {"source_format": "nifti", "corrections": []}
    if int(image.header["sform_code"]) == 0 and int(image.header["qform_code"]) == 0:
        # Analyze-style header: only voxel sizes are known, not how the head lies.
        metadata["corrections"] = [
            "header has no orientation (sform and qform codes are 0): voxel axes taken as RAS"
        ]
    return Volume(array, affine, metadata)


def write_nifti(volume: Volume, path: str | os.PathLike[str], *, slope: float = 1.0) -> Path:
    """Write ``volume`` to ``path`` (``.nii`` or ``.nii.gz``) atomically; return the path.

    Both sform and qform carry the affine (code 1, scanner coordinates); spatial units mm.
    ``slope`` is the header's scl_slope: readers see the stored values times it.

    Raises:
        NiftiError: ``path`` does not end in ``.nii`` or ``.nii.gz``.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise NiftiError(path, "output name must end in .nii or .nii.gz")
    array = volume.array
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    image = nib.Nifti1Image(array, volume.affine_ras)
    image.header.set_xyzt_units(xyz="mm")
    image.set_sform(volume.affine_ras, code=1)
    image.set_qform(volume.affine_ras, code=1)
    image.header.set_slope_inter(slope, 0.0)
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return path


class NiftiFormat:
    """NIfTI-1/2 in the volume format registry (``medseg.io.formats``)."""

    name = "nifti"
    suffixes = (".nii.gz", ".nii")

    def read(self, path: Path) -> Volume:
        """``read_nifti``."""
        return read_nifti(path)

    def write(self, volume: Volume, path: Path) -> Path:
        """``write_nifti``."""
        return write_nifti(volume, path)


NIFTI = NiftiFormat()
