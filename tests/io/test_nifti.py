"""NIfTI read/write round-trips and error paths."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.errors import NiftiError
from medseg.io.nifti import nifti_stem, read_nifti, write_nifti
from medseg.volume import Volume

REAL_NIFTIS = [
    "msd_hippocampus/images/hippocampus_001.nii.gz",
    "msd_hippocampus/labels/hippocampus_001.nii.gz",
    "monai_testing_data/tests/testing_data/anatomical.nii",
    "totalsegmentator_ref/tests/reference_files/example_ct.nii.gz",
]


@pytest.mark.parametrize("relative", REAL_NIFTIS)
def test_real_nifti_round_trips_voxels_and_affine_exactly(
    shared_data: Path, relative: str, tmp_path: Path
) -> None:
    original = read_nifti(shared_data / relative)
    written = write_nifti(original, tmp_path / "copy.nii.gz")
    again = read_nifti(written)
    assert again.array.dtype == original.array.dtype
    assert np.array_equal(again.array, original.array)
    assert np.array_equal(again.affine_ras, original.affine_ras)
    reference = nib.load(str(shared_data / relative))
    assert np.array_equal(original.affine_ras, reference.affine)


def test_big_endian_nifti_reads_in_native_byte_order(shared_data: Path) -> None:
    path = shared_data / "monai_testing_data/tests/testing_data/anatomical.nii"
    volume = read_nifti(path)
    assert volume.array.dtype.byteorder in ("=", "|")
    assert np.array_equal(volume.array, np.asarray(nib.load(str(path)).dataobj))


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


def test_truncated_file_gives_an_error_naming_it(tmp_path: Path, shared_data: Path) -> None:
    source = (shared_data / "monai_testing_data/tests/testing_data/anatomical.nii").read_bytes()
    broken = tmp_path / "broken.nii"
    broken.write_bytes(source[: len(source) // 2])
    with pytest.raises(NiftiError, match=r"broken\.nii"):
        read_nifti(broken)


def test_missing_file_and_wrong_suffix_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(NiftiError, match="file not found"):
        read_nifti(tmp_path / "absent.nii.gz")
    with pytest.raises(NiftiError, match=r"\.nii or \.nii\.gz"):
        write_nifti(Volume(np.zeros((2, 2, 2)), np.eye(4)), tmp_path / "out.img")


@pytest.mark.parametrize(
    ("name", "stem"),
    [("a/hippocampus_007.nii.gz", "hippocampus_007"), ("b.NII", "b"), ("c.txt", "c.txt")],
)
def test_nifti_stem(name: str, stem: str) -> None:
    assert nifti_stem(name) == stem


def test_a_header_without_orientation_is_flagged(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.zeros((3, 3, 3), np.int16), None)
    image.header.set_zooms((2.0, 2.0, 2.0))
    nib.save(image, str(tmp_path / "analyze_like.nii"))
    volume = read_nifti(tmp_path / "analyze_like.nii")
    assert "no orientation" in volume.metadata["corrections"][0]
    assert volume.spacing_mm == pytest.approx((2.0, 2.0, 2.0))
    oriented = read_nifti(write_nifti(volume, tmp_path / "oriented.nii"))
    assert oriented.metadata["corrections"] == []
