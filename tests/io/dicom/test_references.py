"""DICOM series give the voxels and geometry of reference conversions (in RAS)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.io.dicom import read_dicom_series
from tests.io.dicom.cases import assert_matches_reference, reference_in_ras, single_file_folder

DICOM2NIFTI = "dicom2nifti_tests/tests/data"
DICOM2NIFTI_CASES = [
    "generic/anatomical/001",
    "generic/anatomical/001_implicit",
    "generic/anatomical/002_non_isotropic",
    "generic/compressed/001",
    "generic/compressed_j2k/001",
    "generic/compressed_jpeg/001",
    "generic/compressed_jpegls/001",
    "generic/compressed_rle/001",
    "ge/anatomical/001",
    "ge/anatomical/001_implicit",
    "ge/anatomical/001_single_slice",
    "hitachi/anatomical/001",
    "hitachi/anatomical/001_implicit",
    "hyperfine/anatomical/001",
    "philips_enhanced/anatomical/001",
    "philips_enhanced/anatomical/001_implicit",
    "siemens_multiframe/anatomical/001",
    "failing/slicecount/001",
]


@pytest.mark.parametrize("case", DICOM2NIFTI_CASES)
def test_dicom2nifti_ground_truths(shared_data: Path, case: str) -> None:
    folder = shared_data / DICOM2NIFTI / case
    volume = read_dicom_series(folder, workers=1)
    reference = reference_in_ras(folder.parent / f"{folder.name}_ground_truth.nii.gz")
    assert_matches_reference(volume, reference)


@pytest.mark.parametrize("number", range(1, 10))
def test_every_transfer_syntax_of_dcm_qa_ts_matches_dcm2niix(
    shared_data: Path, tmp_path: Path, number: int
) -> None:
    folder = single_file_folder(shared_data / "dcm_qa_ts/In" / f"{number}.dcm", tmp_path)
    volume = read_dicom_series(folder, workers=1)
    assert volume.shape == (64, 64, 35)  # a Siemens mosaic split into its 35 slices
    assert_matches_reference(volume, reference_in_ras(shared_data / f"dcm_qa_ts/Ref/{number}.nii"))


@pytest.mark.parametrize(
    ("file_name", "reference", "value_range"),
    [
        ("12bitUnsigned.dcm", "2.nii", (0, 2908)),
        ("12bitUnsigned_0x0F0F.dcm", "3.nii", (0, 4095)),  # high bits masked off
        ("12bitSigned_0x0F0F.dcm", "4.nii", (-2048, 2047)),  # sign bit is bit 11
    ],
)
def test_12_bit_data_matches_dcm2niix(
    shared_data: Path, tmp_path: Path, file_name: str, reference: str, value_range: tuple[int, int]
) -> None:
    folder = single_file_folder(shared_data / "dcm_qa_12bit/In" / file_name, tmp_path)
    volume = read_dicom_series(folder, workers=1)
    assert (int(volume.array.min()), int(volume.array.max())) == value_range
    assert_matches_reference(volume, reference_in_ras(shared_data / "dcm_qa_12bit/Ref" / reference))


def test_totalsegmentator_jpeg2000_ct_matches_dcm2niix(shared_data: Path) -> None:
    root = shared_data / "totalsegmentator_ref"
    volume = read_dicom_series(root / "tests/reference_files/example_ct_dicom")
    reference = reference_in_ras(
        root / "Ref_regenerated_dcm2niix_v1.0.20260724/example_ct_dicom.nii.gz"
    )
    assert_matches_reference(volume, reference)
    assert volume.spacing_mm == pytest.approx((0.977, 0.977, 2.0), abs=1e-3)
    assert volume.metadata["modality"] == "CT"
    assert volume.array.dtype == np.int16


def test_hounsfield_units_come_from_the_modality_lut(shared_data: Path) -> None:
    volume = read_dicom_series(
        shared_data / "totalsegmentator_ref/tests/reference_files/example_ct_dicom"
    )
    # air outside the body is about -1000 HU once RescaleIntercept is applied
    corner = volume.array[:20, :20, :]
    assert -1100 < float(np.median(corner)) < -900
