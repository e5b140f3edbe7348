"""The volume format registry and the NRRD/MetaImage formats: one scan, one volume.

The same phantom saved as NIfTI, NRRD (``.nrrd`` and detached ``.nhdr``) and MetaImage
(``.mha`` and detached ``.mhd``) must read as the same canonical volume, written by medseg or
converted by SimpleITK itself (which is how 3D Slicer and ITK-SNAP users make such files).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.demo.phantom import make_phantom
from medseg.errors import InputFileError, UnknownFormatError, VolumeFileError
from medseg.io.formats import (
    data_files,
    format_for_path,
    format_named,
    format_names,
    output_name,
    read_volume,
    register_format,
    volume_stem,
    write_volume,
)
from medseg.io.itk import affine_to_itk_geometry, itk_geometry_to_affine
from medseg.io.nifti import read_nifti, write_nifti
from medseg.volume import Volume
from tests.phantoms import SMALL_SPACING_MM, small_phantom

ITK_SUFFIXES = [".nrrd", ".nhdr", ".mha", ".mhd"]


def _phantom(kind: str) -> tuple[Volume, Volume]:
    """``(ct, labels)``: the usual LPS-stored phantom, or one on an oblique grid stored in
    ASL order (neither axis-aligned nor LPS)."""
    if kind == "oblique_asl":
        return make_phantom(
            seed=5, spacing_mm=(3.5, 3.2, 4.5), orientation="ASL", rotation_deg=(4, 7, -3)
        )
    return make_phantom(seed=5, spacing_mm=SMALL_SPACING_MM, orientation="LPS")


def _assert_same(volume: Volume, expected: Volume, *, atol: float = 1e-5) -> None:
    volume, expected = volume.to_closest_ras(), expected.to_closest_ras()
    assert volume.array.dtype == expected.array.dtype
    np.testing.assert_array_equal(volume.array, expected.array)
    np.testing.assert_allclose(volume.affine_ras, expected.affine_ras, atol=atol)


@pytest.mark.parametrize("kind", ["lps", "oblique_asl"])
@pytest.mark.parametrize("suffix", ITK_SUFFIXES)
def test_scan_converted_by_simpleitk_reads_as_the_nifti_route(tmp_path, kind, suffix):
    ct, labels = _phantom(kind)
    for name, volume in (("ct", ct), ("labels", labels)):
        nifti = write_nifti(volume, tmp_path / f"{name}.nii.gz")
        converted = tmp_path / f"{name}{suffix}"
        sitk.WriteImage(sitk.ReadImage(str(nifti)), str(converted), useCompression=True)
        # ITK reads the NIfTI sform in single precision: 1e-4 mm at these coordinates
        _assert_same(read_volume(converted), read_nifti(nifti), atol=1e-4)


@pytest.mark.parametrize("kind", ["lps", "oblique_asl"])
@pytest.mark.parametrize("suffix", [".nii.gz", *ITK_SUFFIXES])
def test_written_and_read_back_in_every_format(tmp_path, kind, suffix):
    ct, labels = _phantom(kind)
    for name, volume in (("ct", ct), ("labels", labels)):
        path = write_volume(volume, tmp_path / f"{name}{suffix}")
        back = read_volume(path)
        assert back.metadata["source_format"] == format_for_path(path).name
        _assert_same(back, volume)
        _assert_same(back, read_nifti(write_nifti(volume, tmp_path / f"{name}_ref.nii.gz")))


def test_index_maps_to_the_point_itk_gives(tmp_path):
    """Voxel (i, j, k) lands where ITK puts it, with x and y negated (LPS -> RAS)."""
    ct, _ = _phantom("oblique_asl")
    image = sitk.ReadImage(str(write_volume(ct, tmp_path / "ct.mha")))
    for index in [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (7, 3, 11), (32, 38, 48)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        ras = ct.affine_ras @ np.array([*index, 1.0])
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-9)
    assert np.allclose(np.array(image[7, 3, 11]), ct.array[7, 3, 11])  # ITK indexes x, y, z


def test_geometry_conversion_round_trips_a_sheared_affine():
    affine = np.array(
        [[-0.7, 0.1, 0.0, 12.5], [0.05, 0.8, 0.3, -40.0], [0.0, -0.2, 2.5, 101.0], [0, 0, 0, 1]]
    )
    np.testing.assert_allclose(itk_geometry_to_affine(*affine_to_itk_geometry(affine)), affine)


@pytest.mark.parametrize("suffix", ITK_SUFFIXES)
@pytest.mark.parametrize(
    ("dtype", "stored"),
    [
        (np.uint8, np.uint8),
        (np.int8, np.int8),
        (np.int16, np.int16),
        (np.uint16, np.uint16),
        (np.int32, np.int32),
        (np.uint32, np.uint32),
        (np.float32, np.float32),
        (np.float64, np.float32),
        (np.bool_, np.uint8),
    ],
)
def test_two_voxel_grids_keep_dtype_and_geometry(tmp_path, suffix, dtype, stored):
    """2 x 2 x 2 and 2 x 1 x 2 grids, oblique: geometry from so few voxels is still exact."""
    rotation = np.array([[0.0, -0.6, 0.8], [1.0, 0.0, 0.0], [0.0, 0.8, 0.6]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.5, 2.0, 7.25])
    affine[:3, 3] = [-3.5, 120.25, -88.0]
    for shape in [(2, 2, 2), (2, 1, 2), (1, 1, 2)]:
        array = (np.arange(np.prod(shape)).reshape(shape) % 3).astype(dtype)
        path = write_volume(Volume(array, affine), tmp_path / f"v{len(shape)}{shape[1]}{suffix}")
        back = read_volume(path)
        assert back.array.dtype == np.dtype(stored)
        assert back.shape == shape
        np.testing.assert_array_equal(back.array, array.astype(stored))
        np.testing.assert_allclose(back.affine_ras, affine, atol=1e-12)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_vector_pixels_are_the_fourth_axis_like_a_4d_nifti(tmp_path, suffix):
    ct, _ = small_phantom(1)
    channels = np.stack([ct.array, ct.array // 2], axis=-1)
    volume = Volume(channels, ct.affine_ras)
    _assert_same(read_volume(write_volume(volume, tmp_path / f"two{suffix}")), volume)
    nifti = read_nifti(write_nifti(volume, tmp_path / "two.nii.gz"))
    _assert_same(read_volume(tmp_path / f"two{suffix}"), nifti)


def test_a_4d_itk_image_reads_like_a_4d_nifti(tmp_path):
    ct, _ = small_phantom(1)
    frames = np.stack([ct.array, ct.array + 1, ct.array + 2], axis=-1)
    volume = Volume(frames, ct.affine_ras)
    image = sitk.GetImageFromArray(frames.transpose(3, 2, 1, 0), isVector=False)  # t, z, y, x
    origin, spacing, direction = affine_to_itk_geometry(ct.affine_ras)
    image.SetOrigin((*origin, 0.0))
    image.SetSpacing((*spacing, 1.0))
    rows = np.eye(4)
    rows[:3, :3] = np.reshape(direction, (3, 3))
    image.SetDirection(rows.ravel().tolist())
    sitk.WriteImage(image, str(tmp_path / "frames.nrrd"))
    _assert_same(read_volume(tmp_path / "frames.nrrd"), volume)


def _write_itk(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_refused_with_a_message_naming_the_file(tmp_path, suffix):
    flat = _write_itk(sitk.Image(5, 6, sitk.sitkInt16), tmp_path / f"flat{suffix}")
    with pytest.raises(VolumeFileError, match=rf"flat{suffix}: a 2D image \(5x6\)"):
        read_volume(flat)
    if suffix == ".nrrd":  # MetaImage stores complex pixels as two-component vectors
        complex_image = sitk.Image(4, 4, 4, sitk.sitkComplexFloat32)
        complex_path = _write_itk(complex_image, tmp_path / f"complex{suffix}")
        with pytest.raises(VolumeFileError, match=rf"complex{suffix}: complex pixels"):
            read_volume(complex_path)
    four_d_vectors = sitk.Image([3, 3, 3, 2], sitk.sitkVectorFloat32, 2)
    four_d_path = _write_itk(four_d_vectors, tmp_path / f"vectors4d{suffix}")
    with pytest.raises(VolumeFileError, match=r"a 4D image \(3x3x3x2\) of 2 component"):
        read_volume(four_d_path)
    junk = tmp_path / f"junk{suffix}"
    junk.write_bytes(b"hello, not an image\n")
    with pytest.raises(VolumeFileError, match=rf"junk{suffix}: cannot read"):
        read_volume(junk)
    with pytest.raises(VolumeFileError, match=rf"absent{suffix}: file not found"):
        read_volume(tmp_path / f"absent{suffix}")


@pytest.mark.parametrize(("suffix", "data_name"), [(".nhdr", "ct.raw.gz"), (".mhd", "ct.zraw")])
def test_detached_header_without_its_data_file_names_the_data_file(tmp_path, suffix, data_name):
    ct, _ = small_phantom(2)
    header = write_volume(ct, tmp_path / f"ct{suffix}")
    assert data_files(header) == (tmp_path / data_name,)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([header.name, data_name])
    (tmp_path / data_name).unlink()
    with pytest.raises(VolumeFileError, match=rf"ct{suffix}: its data file {data_name} is missing"):
        read_volume(header)


def test_attached_files_have_no_data_files(tmp_path):
    ct, _ = small_phantom(2)
    for suffix in [".nii.gz", ".nrrd", ".mha"]:
        assert data_files(write_volume(ct, tmp_path / f"ct{suffix}")) == ()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.mha", "ct.nii.gz", "ct.nrrd"]


def test_suffixes_choose_the_format():
    assert format_names() == ("mha", "nifti", "nrrd")
    assert format_for_path("a/CASE_1.NII.GZ").name == "nifti"
    assert format_for_path("case.nhdr").name == "nrrd"
    assert format_for_path("case.mhd").name == "mha"
    assert format_for_path("case.raw.gz") is None
    assert format_for_path(".nrrd") is None  # a hidden file named like a suffix
    assert volume_stem("x/hippocampus_007.nii.gz") == "hippocampus_007"
    assert volume_stem("b.NII") == "b"
    assert volume_stem("x/case.1.nrrd") == "case.1"
    assert volume_stem("notes.txt") == "notes.txt"
    assert output_name("case_7", "mha") == "case_7.mha"
    assert output_name("case_7", format_named("NIfTI")) == "case_7.nii.gz"


def test_registry_refusals(tmp_path):
    ct, _ = small_phantom(2)
    with pytest.raises(UnknownFormatError, match=r"unknown volume format 'dcm'; known: mha, nifti"):
        format_named("dcm")
    with pytest.raises(VolumeFileError, match=r"ct\.nii\.gz: a nrrd file name ends in \.nrrd"):
        write_volume(ct, tmp_path / "ct.nii.gz", "nrrd")
    with pytest.raises(VolumeFileError, match=r"notes\.txt: not a volume file medseg reads"):
        read_volume(tmp_path / "notes.txt")
    assert issubclass(VolumeFileError, InputFileError)
    with pytest.raises(ValueError, match=r"suffix \.nii belongs to format 'nifti'"):
        register_format(_Named("other", (".nii",)))
    with pytest.raises(ValueError, match="registered already"):
        register_format(_Named("nrrd", (".nrrd2",)))


class _Named:
    def __init__(self, name: str, suffixes: tuple[str, ...]) -> None:
        self.name, self.suffixes = name, suffixes

    def read(self, path: Path) -> Volume:
        raise NotImplementedError

    def write(self, volume: Volume, path: Path) -> Path:
        raise NotImplementedError
