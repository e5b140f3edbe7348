"""DICOM series writer: geometry, exact voxels for every transfer syntax, fake PHI, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage
from scipy.spatial.transform import Rotation

from medseg.demo.dicom_writer import (
    FAKE_PHI,
    TransferSyntax,
    encoding_plugin,
    to_dicom_slice_order,
    write_dicom_series,
)
from medseg.errors import DicomWriteError
from medseg.volume import Volume
from tests.demo.series_readback import read_series

# Unit direction of each axis letter in RAS.
AXIS = {
    "R": [1, 0, 0],
    "L": [-1, 0, 0],
    "A": [0, 1, 0],
    "P": [0, -1, 0],
    "S": [0, 0, 1],
    "I": [0, 0, -1],
}


def make_affine(
    code: str,
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    directions = np.array([AXIS[c] for c in code], dtype=float).T
    directions = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix() @ directions
    affine = np.eye(4)
    affine[:3, :3] = directions * np.asarray(spacing)
    affine[:3, 3] = origin
    return affine


def random_hu(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 3072, size=shape).astype(np.int16)


# Non-square slices (7 columns x 5 rows) so a missing transpose cannot go unnoticed.
SHAPE = (7, 5, 4)

GEOMETRY_CASES = {
    "axial_lps": make_affine("LPS", (0.7, 0.8, 2.0), (10.0, 20.0, -300.0)),
    "axial_ras": make_affine("RAS", (1.2, 1.1, 2.5), (-80.5, -60.25, 12.0)),
    "coronal_lip": make_affine("LIP", (0.9, 1.3, 3.0), (5.0, -7.0, 40.0)),
    "sagittal_pir": make_affine("PIR", (1.1, 0.6, 1.5), (-3.0, 2.0, 1.0)),
    "feet_first_rpi": make_affine("RPI", (0.75, 0.75, 1.25), (0.0, 0.0, -500.0)),
    "oblique": make_affine("LPS", (0.9, 1.1, 2.5), (17.3, -42.1, -250.7), (5.0, -3.0, 7.0)),
}


@pytest.mark.parametrize("affine", GEOMETRY_CASES.values(), ids=GEOMETRY_CASES.keys())
def test_read_back_affine_and_voxels_equal_the_input(affine: np.ndarray, tmp_path: Path) -> None:
    volume = Volume(random_hu(SHAPE), affine)
    paths = write_dicom_series(
        volume, tmp_path / "series", series_description="geometry", patient_id="FAKE-1"
    )
    back = read_series(paths)
    np.testing.assert_allclose(back.affine_ras, affine, atol=1e-4, rtol=0)
    assert np.array_equal(back.array, volume.array)


def test_axial_header_values_follow_dicom_conventions(tmp_path: Path) -> None:
    affine = GEOMETRY_CASES["axial_lps"]
    paths = write_dicom_series(
        Volume(random_hu(SHAPE), affine),
        tmp_path / "series",
        series_description="axial",
        patient_id="FAKE-1",
    )
    first, last = pydicom.dcmread(paths[0]), pydicom.dcmread(paths[-1])
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in first.PixelSpacing] == [0.8, 0.7]  # row spacing (j) first
    assert [float(v) for v in first.ImagePositionPatient] == [-10.0, -20.0, -300.0]
    assert [float(v) for v in last.ImagePositionPatient] == [-10.0, -20.0, -294.0]
    assert (first.Rows, first.Columns) == (5, 7)
    assert float(first.SliceThickness) == float(first.SpacingBetweenSlices) == 2.0
    assert float(last.SliceLocation) == -294.0


@pytest.mark.parametrize(
    ("intercept", "slope"), [(-1024.0, 1.0), (0.0, 1.0), (-1000.0, 0.5), (-2048.0, 2.0)]
)
def test_rescaled_values_equal_the_input(intercept: float, slope: float, tmp_path: Path) -> None:
    hu = random_hu(SHAPE)
    if slope == 2.0:
        hu = (hu // 2 * 2).astype(np.int16)  # representable with slope 2
    paths = write_dicom_series(
        Volume(hu, GEOMETRY_CASES["oblique"]),
        tmp_path / "series",
        series_description="rescale",
        patient_id="FAKE-1",
        rescale_intercept=intercept,
        rescale_slope=slope,
    )
    back = read_series(paths)
    assert np.array_equal(back.array, hu)
    assert float(back.datasets[0].RescaleIntercept) == intercept
    assert float(back.datasets[0].RescaleSlope) == slope
    assert back.datasets[0].pixel_array.dtype == np.int16


@pytest.mark.parametrize("syntax", list(TransferSyntax), ids=[s.value for s in TransferSyntax])
def test_every_transfer_syntax_decodes_to_identical_voxels(
    syntax: TransferSyntax, tmp_path: Path
) -> None:
    hu = random_hu((37, 33, 3), seed=1)  # odd sizes exercise codec padding
    paths = write_dicom_series(
        Volume(hu, GEOMETRY_CASES["coronal_lip"]),
        tmp_path / "series",
        series_description=syntax.value,
        patient_id="FAKE-1",
        transfer_syntax=syntax.value,
    )
    back = read_series(paths)
    assert all(ds.file_meta.TransferSyntaxUID == syntax.uid for ds in back.datasets)
    assert np.array_equal(back.array, hu)


@pytest.mark.parametrize("syntax", list(TransferSyntax), ids=[s.value for s in TransferSyntax])
def test_an_encoder_plugin_is_available_for_every_syntax(syntax: TransferSyntax) -> None:
    expected = {
        TransferSyntax.EXPLICIT_LE: "",
        TransferSyntax.JPEGLS_LOSSLESS: "pyjpegls",
        TransferSyntax.RLE_LOSSLESS: "pylibjpeg",
        TransferSyntax.JPEG2000_LOSSLESS: "pylibjpeg",
    }
    assert encoding_plugin(syntax) == expected[syntax]


def test_ct_image_storage_identity_and_shared_uids(tmp_path: Path) -> None:
    paths = write_dicom_series(
        Volume(random_hu(SHAPE), GEOMETRY_CASES["axial_lps"]),
        tmp_path / "series",
        series_description="uids",
        patient_id="FAKE-1",
        study_uid="1.2.3.4",
        series_number=7,
    )
    datasets = [pydicom.dcmread(p) for p in paths]
    assert {ds.SOPClassUID for ds in datasets} == {CTImageStorage}
    assert {ds.Modality for ds in datasets} == {"CT"}
    assert {ds.StudyInstanceUID for ds in datasets} == {"1.2.3.4"}
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert len({ds.FrameOfReferenceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(paths)
    assert all(ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID for ds in datasets)
    assert {ds.SeriesNumber for ds in datasets} == {7}
    assert all(p.read_bytes()[128:132] == b"DICM" for p in paths)
    assert {(ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) for ds in datasets} == {
        (16, 16, 1)
    }


def test_instance_numbers_are_a_permutation_not_in_spatial_order(tmp_path: Path) -> None:
    paths = write_dicom_series(
        Volume(random_hu((4, 3, 12)), GEOMETRY_CASES["axial_lps"]),
        tmp_path / "series",
        series_description="order",
        patient_id="FAKE-1",
    )
    numbers = [int(pydicom.dcmread(p).InstanceNumber) for p in paths]
    assert sorted(numbers) == list(range(1, 13))
    assert numbers != sorted(numbers)
    assert numbers != sorted(numbers, reverse=True)
    assert [p.name for p in paths] == [f"IM{n:04d}.dcm" for n in numbers]
    in_order = write_dicom_series(
        Volume(random_hu((4, 3, 12)), GEOMETRY_CASES["axial_lps"]),
        tmp_path / "scanner_order",
        series_description="order",
        patient_id="FAKE-1",
        shuffle_instance_numbers=False,
    )
    datasets = [pydicom.dcmread(p) for p in in_order]
    assert [int(ds.InstanceNumber) for ds in datasets] == list(range(1, 13))
    positions = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    assert positions == sorted(positions) or positions == sorted(positions, reverse=True)


def test_phi_fields_hold_the_fake_values(tmp_path: Path) -> None:
    paths = write_dicom_series(
        Volume(random_hu(SHAPE), GEOMETRY_CASES["axial_lps"]),
        tmp_path / "series",
        series_description="phi",
        patient_id="FAKE-PATIENT-42",
        patient_name="FAKE^NAME",
    )
    for path in paths:
        ds = pydicom.dcmread(path)
        assert str(ds.PatientName) == "FAKE^NAME"
        assert ds.PatientID == "FAKE-PATIENT-42"
        for keyword, value in FAKE_PHI.items():
            assert str(ds.data_element(keyword).value) == value


def test_uid_file_names_have_no_extension(tmp_path: Path) -> None:
    paths = write_dicom_series(
        Volume(random_hu(SHAPE), GEOMETRY_CASES["axial_lps"]),
        tmp_path / "series",
        series_description="uid names",
        patient_id="FAKE-1",
        file_names="uid",
    )
    for path in paths:
        assert path.name == pydicom.dcmread(path).SOPInstanceUID
    assert sorted(p.name for p in (tmp_path / "series").iterdir()) == sorted(p.name for p in paths)


def test_numbered_names_take_prefix_and_suffix(tmp_path: Path) -> None:
    paths = write_dicom_series(
        Volume(random_hu(SHAPE), GEOMETRY_CASES["axial_lps"]),
        tmp_path / "series",
        series_description="names",
        patient_id="FAKE-1",
        name_prefix="CT image ",
        name_suffix="",
    )
    assert all(p.name.startswith("CT image ") and p.suffix == "" for p in paths)
    assert len(read_series(paths).datasets) == SHAPE[2]


def test_uid_seed_makes_files_byte_identical(tmp_path: Path) -> None:
    volume = Volume(random_hu(SHAPE), GEOMETRY_CASES["oblique"])
    runs = [
        write_dicom_series(
            volume,
            tmp_path / name,
            series_description="seeded",
            patient_id="FAKE-1",
            uid_seed=seed,
        )
        for name, seed in (("a", "s1"), ("b", "s1"), ("c", None))
    ]
    assert [p.read_bytes() for p in runs[0]] == [p.read_bytes() for p in runs[1]]
    uids = [{pydicom.dcmread(p).SeriesInstanceUID for p in run} for run in runs]
    assert uids[0] == uids[1] != uids[2]


def test_left_handed_grid_reads_back_as_to_dicom_slice_order(tmp_path: Path) -> None:
    affine = make_affine("LPI", (0.7, 0.8, 2.0), (1.0, 2.0, 3.0))  # k against row x column
    volume = Volume(random_hu(SHAPE), affine)
    paths = write_dicom_series(
        volume, tmp_path / "series", series_description="lh", patient_id="FAKE-1"
    )
    back, expected = read_series(paths), to_dicom_slice_order(volume)
    assert np.linalg.det(expected.affine_ras[:3, :3]) > 0
    np.testing.assert_allclose(back.affine_ras, expected.affine_ras, atol=1e-4, rtol=0)
    assert np.array_equal(back.array, expected.array)


def test_workers_write_the_same_series(tmp_path: Path) -> None:
    volume = Volume(random_hu((16, 12, 6)), GEOMETRY_CASES["axial_lps"])
    kwargs = {"series_description": "pool", "patient_id": "FAKE-1", "uid_seed": "pool"}
    serial = write_dicom_series(volume, tmp_path / "serial", **kwargs)
    pooled = write_dicom_series(
        volume, tmp_path / "pooled", workers=2, transfer_syntax="jpegls_lossless", **kwargs
    )
    assert [p.name for p in serial] == [p.name for p in pooled]
    assert np.array_equal(read_series(pooled).array, volume.array)


def _volume(shape: tuple[int, ...], affine: np.ndarray, fill: float = 0) -> Volume:
    return Volume(np.full(shape, fill, dtype=np.float32), affine)


SHEARED = np.array([[1.0, 0.3, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]])

ERROR_CASES = {
    "4d": (_volume((3, 3, 3, 2), np.eye(4)), {}, "expected a 3D volume"),
    "too_bright": (_volume((3, 3, 2), np.eye(4), 40000), {}, "do not fit int16"),
    "not_finite": (_volume((3, 3, 2), np.eye(4), np.nan), {}, "NaN or infinite"),
    "sheared": (_volume((3, 3, 2), SHEARED), {}, "not perpendicular"),
    "unknown_naming": (_volume((3, 3, 2), np.eye(4)), {"file_names": "dates"}, "'numbered' or"),
    "zero_slope": (_volume((3, 3, 2), np.eye(4)), {"rescale_slope": 0.0}, "must not be 0"),
    "small_jpeg2000": (
        _volume((40, 31, 2), np.eye(4)),
        {"transfer_syntax": "jpeg2000_lossless"},
        "at least 32 x 32",
    ),
    "unknown_syntax": (
        _volume((3, 3, 2), np.eye(4)),
        {"transfer_syntax": "jpeg_xl"},
        "unknown transfer syntax 'jpeg_xl'",
    ),
}


@pytest.mark.parametrize(("volume", "options", "message"), ERROR_CASES.values(), ids=ERROR_CASES)
def test_unwritable_requests_raise(
    volume: Volume, options: dict[str, object], message: str, tmp_path: Path
) -> None:
    with pytest.raises(DicomWriteError, match=message):
        write_dicom_series(
            volume, tmp_path / "s", series_description="x", patient_id="F", **options
        )


def test_non_empty_output_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "old.dcm").write_bytes(b"x")
    with pytest.raises(DicomWriteError, match="not empty"):
        write_dicom_series(
            _volume((3, 3, 2), np.eye(4)),
            tmp_path / "series",
            series_description="x",
            patient_id="F",
        )
