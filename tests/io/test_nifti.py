"""NIfTI read/write round-trips and error paths.

On phantom volumes; the reference tests at the end use real NIfTI files from ../shared/data.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.demo.phantom import make_phantom
from medseg.errors import NiftiError
from medseg.io.nifti import read_nifti, write_nifti
from medseg.volume import Volume
from tests.phantoms import SMALL_SPACING_MM, small_phantom

REAL_NIFTIS = [
    "msd_hippocampus/images/hippocampus_001.nii.gz",
    "msd_hippocampus/labels/hippocampus_001.nii.gz",
    "monai_testing_data/tests/testing_data/anatomical.nii",
    "totalsegmentator_ref/tests/reference_files/example_ct.nii.gz",
]
PHANTOM_SEED = 7


def _phantom_volume(kind: str) -> Volume:
    """Phantom CT variants: int16 HU, uint8 labels, an LAS-stored grid, float32 on an oblique
    grid."""
    if kind == "labels":
        return small_phantom(PHANTOM_SEED)[1]
    if kind == "las":
        return make_phantom(seed=PHANTOM_SEED, spacing_mm=SMALL_SPACING_MM, orientation="LAS")[0]
    if kind == "oblique_float32":
        ct, _ = make_phantom(seed=PHANTOM_SEED, spacing_mm=(3.5, 3.2, 4.5), rotation_deg=(4, 0, -3))
        return ct.with_array(ct.array.astype(np.float32) / 7.0)
    return small_phantom(PHANTOM_SEED)[0]


def _assert_round_trips_exactly(path: Path, tmp_path: Path) -> None:
    original = read_nifti(path)
    written = write_nifti(original, tmp_path / "copy.nii.gz")
    again = read_nifti(written)
    assert again.array.dtype == original.array.dtype
    assert np.array_equal(again.array, original.array)
    assert np.array_equal(again.affine_ras, original.affine_ras)
    reference = nib.load(str(path))
    assert np.array_equal(original.affine_ras, reference.affine)


@pytest.mark.parametrize("kind", ["ct", "labels", "las", "oblique_float32"])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_phantom_nifti_round_trips_voxels_and_affine_exactly(
    tmp_path: Path, kind: str, suffix: str
) -> None:
    volume = _phantom_volume(kind)
    path = write_nifti(volume, tmp_path / f"phantom{suffix}")
    assert np.array_equal(read_nifti(path).array, volume.array)
    assert np.allclose(read_nifti(path).affine_ras, volume.affine_ras, atol=1e-4)
    _assert_round_trips_exactly(path, tmp_path)


def _big_endian_copy(volume: Volume, path: Path) -> Path:
    """``volume`` written by nibabel with a big-endian header and data."""
    header = nib.Nifti1Header(endianness=">")
    image = nib.Nifti1Image(volume.array.astype(">i2"), volume.affine_ras, header=header)
    nib.save(image, str(path))
    assert path.read_bytes()[:4] == (348).to_bytes(4, "big")  # sizeof_hdr, big-endian
    return path


def _assert_reads_in_native_byte_order(path: Path) -> None:
    volume = read_nifti(path)
    assert volume.array.dtype.byteorder in ("=", "|")
    assert np.array_equal(volume.array, np.asarray(nib.load(str(path)).dataobj))


def test_big_endian_nifti_reads_in_native_byte_order(tmp_path: Path) -> None:
    ct = small_phantom(PHANTOM_SEED)[0]
    path = _big_endian_copy(ct, tmp_path / "big_endian.nii")
    _assert_reads_in_native_byte_order(path)
    assert np.array_equal(read_nifti(path).array, ct.array)


def test_float64_affine_survives_within_float32_precision(tmp_path: Path) -> None:
    affine = np.array(
        [
            [0.9765625, 0.01, 0, -249.51171875],
            [0, 0.96, 0.3, -12.3456789],
            [0, -0.2, 2.0, 1234.5678],
            [0, 0, 0, 1],
        ]
    )
    volume = Volume(np.arange(60, dtype=np.int16).reshape(3, 4, 5), affine)
    again = read_nifti(write_nifti(volume, tmp_path / "v.nii"))
    assert np.allclose(again.affine_ras, affine, atol=1e-4, rtol=0)
    assert np.array_equal(again.array, volume.array)


def test_atomic_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    volume = Volume(np.zeros((2, 2, 2), np.uint8), np.eye(4))
    write_nifti(volume, tmp_path / "out.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


def _assert_truncated_copy_is_refused(source: bytes, tmp_path: Path) -> None:
    broken = tmp_path / "broken.nii"
    broken.write_bytes(source[: len(source) // 2])
    with pytest.raises(NiftiError, match=r"broken\.nii"):
        read_nifti(broken)


def test_truncated_file_gives_an_error_naming_it(tmp_path: Path) -> None:
    source = write_nifti(small_phantom(PHANTOM_SEED)[0], tmp_path / "whole.nii").read_bytes()
    _assert_truncated_copy_is_refused(source, tmp_path)


def test_missing_file_and_wrong_suffix_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(NiftiError, match="file not found"):
        read_nifti(tmp_path / "absent.nii.gz")
    with pytest.raises(NiftiError, match=r"\.nii or \.nii\.gz"):
        write_nifti(Volume(np.zeros((2, 2, 2)), np.eye(4)), tmp_path / "out.img")


def test_a_header_without_orientation_is_flagged(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.zeros((3, 3, 3), np.int16), None)
    image.header.set_zooms((2.0, 2.0, 2.0))
    nib.save(image, str(tmp_path / "analyze_like.nii"))
    volume = read_nifti(tmp_path / "analyze_like.nii")
    assert "no orientation" in volume.metadata["corrections"][0]
    assert volume.spacing_mm == pytest.approx((2.0, 2.0, 2.0))
    oriented = read_nifti(write_nifti(volume, tmp_path / "oriented.nii"))
    assert oriented.metadata["corrections"] == []


# --- reference data (../shared/data) ---------------------------------------------------------


@pytest.mark.parametrize("relative", REAL_NIFTIS)
def test_real_nifti_round_trips_voxels_and_affine_exactly(
    shared_data: Path, relative: str, tmp_path: Path
) -> None:
    _assert_round_trips_exactly(shared_data / relative, tmp_path)


def test_real_big_endian_nifti_reads_in_native_byte_order(shared_data: Path) -> None:
    _assert_reads_in_native_byte_order(
        shared_data / "monai_testing_data/tests/testing_data/anatomical.nii"
    )


def test_truncated_real_file_gives_an_error_naming_it(tmp_path: Path, shared_data: Path) -> None:
    source = (shared_data / "monai_testing_data/tests/testing_data/anatomical.nii").read_bytes()
    _assert_truncated_copy_is_refused(source, tmp_path)


@pytest.mark.parametrize(
    ("stored", "slope", "inter", "expected", "dtype"),
    [
        # fractional scaling (MR, PET, a probability map in 8 bits): read as float, not rounded
        (np.int16, 0.5, 0.25, [5.25, 10.25, 15.25], np.float32),
        (np.uint8, 1 / 255, 0.0, [10 / 255, 20 / 255, 30 / 255], np.float32),
        # unsigned storage with a negative intercept (CT in HU): no wrap-around
        (np.uint16, 1.0, -1024.0, [-1014, -1004, -994], np.int32),
        (np.int16, 2.0, 0.0, [20, 40, 60], np.int32),
        (np.int16, 1.0, 0.0, [10, 20, 30], np.int16),  # no scaling: the stored type
    ],
)
def test_the_header_scaling_is_applied_without_rounding_or_overflow(
    tmp_path: Path, stored: type, slope: float, inter: float, expected: list, dtype: type
) -> None:
    image = nib.Nifti1Image(np.array([10, 20, 30], stored).reshape(3, 1, 1), np.eye(4))
    image.header.set_slope_inter(slope, inter)
    nib.save(image, tmp_path / "scaled.nii.gz")
    volume = read_nifti(tmp_path / "scaled.nii.gz")
    assert volume.array.dtype == dtype
    np.testing.assert_allclose(volume.array.ravel(), expected, rtol=1e-6)


def test_a_slope_written_is_read_back(tmp_path: Path) -> None:
    steps = Volume(np.array([0, 128, 255], np.uint8).reshape(3, 1, 1), np.eye(4))
    write_nifti(steps, tmp_path / "steps.nii.gz", slope=1 / 255)
    np.testing.assert_allclose(
        read_nifti(tmp_path / "steps.nii.gz").array.ravel(), [0, 128 / 255, 1], rtol=1e-6
    )
