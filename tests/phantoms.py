"""Small synthetic CT phantoms as real NIfTI files and DICOM series, for component tests.

The demo's generator (``medseg.demo.phantom``) on a coarse grid: 49 x 39 x 33 voxels at
3 x 3 x 4 mm by default, liver, spleen, both kidneys and spine (``PHANTOM_LABELS``), in
milliseconds. Nothing here needs downloaded data.
"""

from __future__ import annotations

from pathlib import Path

import pydicom

from medseg.demo.dicom_writer import TransferSyntax, to_dicom_slice_order, write_dicom_series
from medseg.demo.phantom import PHANTOM_LABELS, make_phantom
from medseg.io.nifti import write_nifti
from medseg.volume import Volume

__all__ = [
    "PHANTOM_LABELS",
    "SMALL_SPACING_MM",
    "small_phantom",
    "stamp_dicom",
    "write_phantom_dicom",
    "write_phantom_nifti",
]

SMALL_SPACING_MM = (3.0, 3.0, 4.0)


def small_phantom(
    seed: int = 0,
    *,
    spacing_mm: tuple[float, float, float] = SMALL_SPACING_MM,
    orientation: str = "LPS",
) -> tuple[Volume, Volume]:
    """``(ct, labels)`` of phantom ``seed`` on a coarse grid, in closest-RAS voxel order."""
    ct, labels = make_phantom(seed=seed, spacing_mm=spacing_mm, orientation=orientation)
    return ct.to_closest_ras(), labels.to_closest_ras()


def write_phantom_nifti(
    image_path: Path, seed: int = 0, *, label_path: Path | None = None, **grid: object
) -> Path:
    """Write phantom ``seed`` as a NIfTI image (HU) and, when ``label_path`` is given, its
    label map on the same grid; returns ``image_path``."""
    ct, labels = small_phantom(seed, **grid)  # type: ignore[arg-type]
    write_nifti(ct, image_path)
    if label_path is not None:
        write_nifti(labels, label_path)
    return Path(image_path)


def write_phantom_dicom(
    folder: Path,
    seed: int = 0,
    *,
    patient_id: str = "PHANTOM",
    patient_name: str = "PHANTOM^TEST",
    transfer_syntax: TransferSyntax = TransferSyntax.EXPLICIT_LE,
    **grid: object,
) -> list[Path]:
    """Write phantom ``seed`` as a CT DICOM series into ``folder`` (created, must be empty).

    Ingesting the series gives the grid and voxels of ``small_phantom(seed, **grid)``.
    """
    grid.setdefault("spacing_mm", SMALL_SPACING_MM)
    ct, _ = make_phantom(seed=seed, **grid)  # type: ignore[arg-type]
    return write_dicom_series(
        to_dicom_slice_order(ct),
        Path(folder),
        series_description=f"phantom {seed}",
        patient_id=patient_id,
        patient_name=patient_name,
        transfer_syntax=transfer_syntax,
        uid_seed=f"medseg-test-phantom-{seed}-{patient_id}",
    )


def stamp_dicom(paths: list[Path], **attributes: object) -> list[Path]:
    """Set DICOM attributes (``keyword=value``) in every file of ``paths`` in place.

    For what the phantom writer does not set (BodyPartExamined, a scout's SeriesDescription,
    other UIDs...); the file meta follows a changed SOPInstanceUID. Returns ``paths``.
    """
    for path in paths:
        dataset = pydicom.dcmread(path)
        for keyword, value in attributes.items():
            setattr(dataset, keyword, value)
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.save_as(path, enforce_file_format=True)
    return paths
