"""Trees of small phantom scans for the shutdown and concurrency tests: many scans that each take
well under a second to predict, so a command is reliably mid-work when a test signals it."""

from __future__ import annotations

from pathlib import Path

from medseg.demo.dicom_writer import TransferSyntax, to_dicom_slice_order, write_dicom_series
from medseg.demo.phantom import make_phantom
from medseg.io.nifti import write_nifti
from tests.phantoms import SMALL_SPACING_MM

CROP_SHAPE = (16, 16, 10)  # a 48 x 48 x 40 mm block around the phantom's centre


def write_phantom_scans(
    folder: Path, count: int, *, shape: tuple[int, int, int] = CROP_SHAPE
) -> list[Path]:
    """``count`` NIfTI scans ``scan_000.nii.gz``... (phantom seeds 0, 1, ...) in ``folder``."""
    paths = []
    for seed in range(count):
        ct, _ = make_phantom(seed=seed, shape=shape, spacing_mm=SMALL_SPACING_MM)
        paths.append(write_nifti(ct.to_closest_ras(), Path(folder) / f"scan_{seed:03d}.nii.gz"))
    return paths


def write_phantom_series(
    folder: Path,
    count: int,
    *,
    shape: tuple[int, int, int] = CROP_SHAPE,
    transfer_syntax: TransferSyntax = TransferSyntax.EXPLICIT_LE,
) -> list[Path]:
    """``count`` DICOM series in ``folder/series_000``... (phantom seeds 0, 1, ...)."""
    folders = []
    for seed in range(count):
        ct, _ = make_phantom(seed=seed, shape=shape, spacing_mm=SMALL_SPACING_MM)
        series = Path(folder) / f"series_{seed:03d}"
        write_dicom_series(
            to_dicom_slice_order(ct),
            series,
            series_description=f"phantom {seed}",
            patient_id="PHANTOM",
            patient_name="PHANTOM^TEST",
            transfer_syntax=transfer_syntax,
            uid_seed=f"medseg-shutdown-{seed}",
        )
        folders.append(series)
    return folders
