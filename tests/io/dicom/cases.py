"""Helpers shared by the DICOM tests: read references and compare them in RAS."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.volume import Volume


def reference_in_ras(path: Path) -> Volume:
    """A reference NIfTI with scaling applied, brought to the closest-RAS voxel order."""
    image = nib.load(str(path))
    array = np.asarray(image.get_fdata(dtype=np.float64))
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Volume(array, image.affine).to_closest_ras()


def single_file_folder(source: Path, tmp_path: Path) -> Path:
    """Copy one DICOM file into its own folder so it is read as a series alone."""
    folder = tmp_path / source.stem
    folder.mkdir()
    shutil.copy(source, folder / source.name)
    return folder


def assert_matches_reference(volume: Volume, reference: Volume, *, atol_mm: float = 1e-3) -> None:
    """Same grid (affine within ``atol_mm``) and the same voxel values."""
    assert volume.shape[:3] == reference.shape[:3]
    assert np.abs(volume.affine_ras - reference.affine_ras).max() < atol_mm
    values = volume.array.astype(np.float64)
    if np.issubdtype(volume.array.dtype, np.integer):
        assert np.array_equal(values, reference.array)
    else:  # float32 modality-LUT output vs a float64 reference
        assert np.allclose(values, reference.array, rtol=1e-6, atol=1e-4)
