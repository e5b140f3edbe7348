"""Awkward and broken DICOM inputs: a correct volume or a specific error naming the file.

Phantom series the test bends (tilt, two orientations in one series, a study folder with
localizer, screenshot and DICOMDIR, four images at one position); the reference tests after them
use dicom2nifti's failing cases, dcm2niix's CT set, MONAI's and pydicom's files from
../shared/data.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.fileset import FileSet

from medseg.demo.dicom_writer import write_dicom_series
from medseg.demo.phantom import render_phantom, sample_anatomy
from medseg.errors import (
    DicomFileError,
    DicomSeriesError,
    DuplicateSlicePositionError,
    MedsegError,
    MissingSlicesError,
)
from medseg.io.dicom import load_series, read_dicom_series, scan_dicom_files
from medseg.volume import Volume
from tests.io.dicom.cases import reference_in_ras
from tests.phantoms import small_phantom, stamp_dicom, write_phantom_dicom, write_secondary_capture

FAILING = "dicom2nifti_tests/tests/data/failing"


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _dcm2niix_tilt_corrected(folder: Path, out: Path) -> Volume:
    """Run the dcm2niix PyPI binary as the oracle and read its tilt-corrected output."""
    out.mkdir()
    binary = Path(sys.executable).parent / "dcm2niix"
    subprocess.run(
        [str(binary), "-z", "y", "-o", str(out), str(folder)], check=True, capture_output=True
    )
    (tilted,) = out.glob("*_Tilt_1.nii.gz")
    return reference_in_ras(tilted)


def _assert_close_to_dcm2niix_tilt(volume: Volume, reference: Volume) -> None:
    assert volume.shape == reference.shape
    assert np.abs(volume.affine_ras - reference.affine_ras).max() < 1e-3
    within_one_hu = np.abs(volume.array - reference.array) <= 1
    assert within_one_hu.mean() > 0.995  # both interpolate linearly; edges differ slightly


# --- phantom series ----------------------------------------------------------------------------

TILT_DEG = 15.0


def _tilted_phantom_series(folder: Path) -> list[Path]:
    """Phantom 1 scanned with a 15 degree gantry tilt: axial slices (2.5 mm pixels, 4 mm apart)
    whose origins drift towards anterior, as a tilted CT stores them; no GantryDetectorTilt."""
    anatomy = sample_anatomy(1)
    shape = (60, 48, 30)
    affine = np.eye(4)
    affine[:3, 0] = [-2.5, 0.0, 0.0]  # DICOM's axial order: columns towards left
    affine[:3, 1] = [0.0, -2.5, 0.0]  # rows towards posterior
    affine[:3, 2] = [0.0, 4.0 * np.tan(np.radians(TILT_DEG)), 4.0]  # the sheared slice step
    affine[:3, 3] = anatomy.center_mm - affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    image, _ = render_phantom(anatomy, affine_ras=affine, shape=shape)
    volume = Volume(image.astype(np.int16), affine)
    return write_dicom_series(
        volume, folder, series_description="tilted", patient_id="TILT", uid_seed="tilt"
    )


def test_gantry_tilt_of_a_phantom_is_detected_and_corrected_like_dcm2niix(tmp_path: Path) -> None:
    _tilted_phantom_series(tmp_path / "tilted")
    volume = read_dicom_series(tmp_path / "tilted")
    assert any(
        f"gantry tilt of {TILT_DEG:.2f} degrees" in c for c in volume.metadata["corrections"]
    )
    assert volume.shape == (60, 61, 30)  # rows widened to hold every shifted slice
    # dcm2niix corrects a tilt only when the tag says so; medseg read the series without it
    shutil.copytree(tmp_path / "tilted", tmp_path / "tagged")
    stamp_dicom(sorted((tmp_path / "tagged").iterdir()), GantryDetectorTilt=TILT_DEG)
    reference = _dcm2niix_tilt_corrected(tmp_path / "tagged", tmp_path / "ref")
    _assert_close_to_dcm2niix_tilt(volume, reference)


def test_one_series_uid_with_two_orientations_is_split_into_two_volumes(tmp_path: Path) -> None:
    axial = write_phantom_dicom(tmp_path / "axial", 1)
    sagittal = write_phantom_dicom(
        tmp_path / "sagittal", 1, orientation="PIR", spacing_mm=(3.0, 3.0, 5.0)
    )
    first = pydicom.dcmread(axial[0], stop_before_pixels=True)
    shared = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
    stamp_dicom(sagittal, **{keyword: first.get(keyword) for keyword in shared})
    for path in sagittal:
        path.rename(tmp_path / "axial" / f"sag {path.name}")
    scan = scan_dicom_files(_files(tmp_path / "axial"))
    assert [s.part for s in scan.series] == [1, 2]
    volumes = sorted((load_series(s) for s in scan.series), key=lambda v: max(v.spacing_mm))
    expected = [small_phantom(1)[0], small_phantom(1, orientation="PIR", spacing_mm=(3, 3, 5))[0]]
    for volume, phantom in zip(volumes, expected, strict=True):
        assert volume.same_grid(phantom) and np.array_equal(volume.array, phantom.array)
    # file names with spaces are found and used
    assert any(" " in f.name for s in scan.series for f in s.files)


def test_study_folder_with_localizer_screenshot_dicomdir_and_two_reconstructions(
    tmp_path: Path,
) -> None:
    root = tmp_path / "study"
    primary = write_phantom_dicom(root / "ct", 1)
    series_uid = pydicom.dcmread(primary[0], stop_before_pixels=True).SeriesInstanceUID
    # a second reconstruction in the same series, told apart only by ImageType
    added = write_phantom_dicom(tmp_path / "added", 1, spacing_mm=(3.0, 3.0, 6.0))
    stamp_dicom(
        added, SeriesInstanceUID=series_uid, ImageType=["DERIVED", "SECONDARY", "AXIAL", "ADD"]
    )
    for path in added:
        path.rename(root / "ct" / f"ADD{path.name}")
    scout = write_phantom_dicom(root / "scout", 2)
    stamp_dicom(scout, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    write_secondary_capture(root / "capture" / "screen.dcm")
    index = FileSet()
    for path in primary:
        index.add(path)
    index.write(root / "media")  # DICOMDIR and copies of the primary series' files
    scan = scan_dicom_files(_files(root))
    assert sorted({s.reason for s in scan.skipped}) == [
        "DICOMDIR index file, not an image",
        "Secondary Capture Image Storage: not a scan volume",
        "localizer image (ImageType ORIGINAL/PRIMARY/LOCALIZER)",
    ]
    assert not scan.failed
    volumes = {s.describe(root): load_series(s) for s in scan.series}
    assert sorted(volumes) == ["ct series 1 part 1", "ct series 1 part 2"]
    spacings = sorted(volume.spacing_mm[2] for volume in volumes.values())
    assert spacings == pytest.approx([4.0, 6.0])
    reconstructions = sorted(len(s.frames) for s in scan.series)
    assert reconstructions == [23, 33]  # the DICOMDIR's copies of the primary are used once


def test_four_different_images_at_one_position_are_refused(tmp_path: Path) -> None:
    files = write_phantom_dicom(tmp_path / "series", 3)
    position = pydicom.dcmread(files[13], stop_before_pixels=True).ImagePositionPatient
    stamp_dicom(files[10:13], ImagePositionPatient=position)
    with pytest.raises(
        DuplicateSlicePositionError, match=r"4 different images at the same slice position"
    ) as caught:
        read_dicom_series(tmp_path / "series")
    assert "series" in str(caught.value)


# --- reference data (../shared/data) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "error", "message"),
    [
        (
            "notavolume/001",
            DuplicateSlicePositionError,
            r"4 different images at the same slice position",
        ),
        (
            "sliceincrement/001",
            MissingSlicesError,
            r"1 slice\(s\) missing between IM-0001-0009-0001.dcm and IM-0001-0010-0001.dcm",
        ),
        (
            "sliceincrement/002",
            MissingSlicesError,
            r"1 slice\(s\) missing between IM-0001-0003.dcm and IM-0001-0005.dcm",
        ),
    ],
)
def test_failing_series_give_specific_errors(
    shared_data: Path, case: str, error: type[MedsegError], message: str
) -> None:
    with pytest.raises(error, match=message) as caught:
        read_dicom_series(shared_data / FAILING / case)
    assert case in str(caught.value)


def test_gantry_tilt_without_the_tilt_tag_is_detected_and_corrected_like_dcm2niix(
    shared_data: Path, tmp_path: Path
) -> None:
    folder = shared_data / FAILING / "gantrytilting/001"
    volume = read_dicom_series(folder)
    assert any("gantry tilt of 14.00 degrees" in c for c in volume.metadata["corrections"])
    _assert_close_to_dcm2niix_tilt(volume, _dcm2niix_tilt_corrected(folder, tmp_path / "ref"))


def test_real_series_uid_with_two_orientations_is_split_into_two_volumes(
    shared_data: Path,
) -> None:
    scan = scan_dicom_files(_files(shared_data / FAILING / "sliceorientation/001"))
    assert [s.part for s in scan.series] == [1, 2]
    volumes = [load_series(s) for s in scan.series]
    assert sorted(v.shape for v in volumes) == [(2, 288, 288), (288, 288, 2)]
    spacings = sorted(round(max(v.spacing_mm), 2) for v in volumes)
    assert spacings == [3.3, 4.4]
    # file names with spaces are found and used
    assert any(" " in f.name for s in scan.series for f in s.files)


def test_dcm_qa_ct_study_folder(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "dcm_qa_ct"
    scan = scan_dicom_files(_files(root))
    reasons = sorted({s.reason for s in scan.skipped})
    assert reasons == [
        "DICOMDIR index file, not an image",
        "Secondary Capture Image Storage: not a scan volume",
        "localizer image (ImageType ORIGINAL/PRIMARY/LOCALIZER)",
    ]
    assert not scan.failed
    volumes = {s.describe(root): load_series(s) for s in scan.series}
    assert sorted(volumes) == [
        "In/GE series 2 part 1",
        "In/GE series 2 part 2",
        "In/Philips/S21610/S2010 series 201",
    ]
    # GE splits by ImageType (the ADD images are a second reconstruction); both are tilted
    for name, spacing in [("In/GE series 2 part 1", 4.002), ("In/GE series 2 part 2", 6.999)]:
        assert volumes[name].spacing_mm[2] == pytest.approx(spacing, abs=1e-3)
        assert any(
            "gantry tilt of 18.50 degrees" in c for c in volumes[name].metadata["corrections"]
        )
    philips = volumes["In/Philips/S21610/S2010 series 201"]
    reference = _dcm2niix_tilt_corrected(root / "In/Philips", tmp_path / "ref")
    _assert_close_to_dcm2niix_tilt(philips, reference)


def test_monai_ct_with_a_202_mm_gap_is_refused(shared_data: Path) -> None:
    with pytest.raises(MissingSlicesError, match=r"161 slice\(s\) missing between 7106 and 7136"):
        read_dicom_series(shared_data / "monai_testing_data/tests/testing_data/CT_DICOM")


PYDICOM_FILES = "pydicom_test_files/src/pydicom/data/test_files"
NOT_DICOM = {
    "README.txt",
    "crayons.icc",
    "dicomdirtests/README.txt",
    "dicomdirtests/TINY_ALPHA/README",
    "no_meta.dcm",  # a stray byte before the first element: not parseable as DICOM
    "rtplan.dump",
    "rtstruct.dump",
    "test1.json",
    "test_PN.json",
    "zipMR.gz",
}
FAILS = {
    "MR_truncated.dcm": "cannot decode pixel data",
    "meta_missing_tsyntax.dcm": "pixel data without SOP class",
    "nested_priv_SQ.dcm": "pixel data without SOP class",
}
SKIP_REASONS = {
    "rtstruct.dcm": "RT Structure Set Storage: not a scan volume",
    "test-SR.dcm": "Comprehensive SR Storage: not a scan volume",
    "rtdose.dcm": "RT Dose Storage: not a scan volume",
    "liver_1frame.dcm": "Segmentation Storage: not a scan volume",
    "SC_rgb_jpeg.dcm": "Secondary Capture Image Storage: not a scan volume",
    "dicomdirtests/DICOMDIR": "DICOMDIR index file, not an image",
    "dicomdirtests/98892001/CT2N/6293": "localizer image (ImageType ORIGINAL/PRIMARY/LOCALIZER)",
    "waveform_ecg.dcm": "12-lead ECG Waveform Storage: not a scan volume",
}


def _outcome(path: Path) -> tuple[str, str]:
    scan = scan_dicom_files([path])
    if scan.not_dicom:
        return "not dicom", ""
    if scan.skipped:
        return "skipped", scan.skipped[0].reason
    if scan.failed:
        return "failed", str(scan.failed[0])
    try:
        volume = load_series(scan.series[0])
    except (DicomFileError, DicomSeriesError) as error:
        return "failed", str(error)
    assert volume.orientation == "RAS" and min(volume.spacing_mm) > 0
    return "volume", str(volume.shape)


def test_every_pydicom_test_file_is_a_volume_a_skip_or_an_error_naming_it(
    shared_data: Path,
) -> None:
    root = shared_data / PYDICOM_FILES
    outcomes = {str(p.relative_to(root)): (p, _outcome(p)) for p in _files(root)}
    assert {name for name, (_, (kind, _)) in outcomes.items() if kind == "not dicom"} == NOT_DICOM
    failed = {name: text for name, (_, (kind, text)) in outcomes.items() if kind == "failed"}
    assert set(failed) == set(FAILS)
    for name, text in failed.items():
        assert FAILS[name] in text and name.split("/")[-1] in text
    for name, reason in SKIP_REASONS.items():
        assert outcomes[name][1] == ("skipped", reason)
    volumes = {name: text for name, (_, (kind, text)) in outcomes.items() if kind == "volume"}
    assert volumes["CT_small.dcm"] == "(128, 128, 1)"
    assert (
        volumes["MR_small_jpeg_ls_lossless.dcm"]
        == volumes["MR_small_bigendian.dcm"]
        == "(64, 64, 1)"
    )


@pytest.mark.parametrize(
    "variant",
    [
        "MR_small_RLE.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_implicit.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_padded.dcm",
    ],
)
def test_pydicom_mr_small_encodings_decode_to_identical_voxels(
    shared_data: Path, tmp_path: Path, variant: str
) -> None:
    root = shared_data / PYDICOM_FILES
    reference = load_series(scan_dicom_files([root / "MR_small.dcm"]).series[0])
    volume = load_series(scan_dicom_files([root / variant]).series[0])
    assert np.array_equal(volume.array, reference.array)
    assert np.allclose(volume.affine_ras, reference.affine_ras)
