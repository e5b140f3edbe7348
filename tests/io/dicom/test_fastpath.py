"""The pixel fast path gives exactly what pydicom decodes, or declines.

On phantom slices in each encoding the test writes; the reference tests at the end use
pydicom's and dicom2nifti's test files from ../shared/data.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pydicom.pixels
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from medseg.demo.dicom_writer import TransferSyntax
from medseg.io.dicom.fastpath import Codec, pixel_data_layout, read_pixels
from medseg.io.dicom.scan import DEFER_BYTES
from tests.phantoms import write_phantom_dicom

FILES = "pydicom_test_files/src/pydicom/data/test_files"
PHANTOM_SEED = 6
SLICE = 16  # a slice through the organs


def _slice(folder: Path, syntax: TransferSyntax = TransferSyntax.EXPLICIT_LE) -> Path:
    """One slice of the phantom series written in ``syntax``."""
    return write_phantom_dicom(folder / syntax.value, PHANTOM_SEED, transfer_syntax=syntax)[SLICE]


def _resaved(folder: Path, change: Callable[[Dataset], None], **write_options: bool) -> Path:
    """The explicit little endian slice, changed and written again."""
    dataset = pydicom.dcmread(_slice(folder))
    change(dataset)
    path = folder / "changed.dcm"
    pydicom.dcmwrite(path, dataset, force_encoding=True, **write_options)
    return path


def _implicit(dataset: Dataset) -> None:
    dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian


def _big_endian(dataset: Dataset) -> None:
    dataset.PixelData = dataset.pixel_array.astype(">i2").tobytes()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRBigEndian


def _twelve_bit(dataset: Dataset) -> None:
    dataset.BitsStored, dataset.HighBit = 12, 11  # the phantom's values fit signed 12 bits


PHANTOM_ENCODINGS: dict[str, tuple[Callable[[Path], Path], Codec | None]] = {
    "explicit_le": (_slice, Codec.NATIVE),
    "implicit_le": (
        lambda f: _resaved(f, _implicit, implicit_vr=True, little_endian=True),
        Codec.NATIVE,
    ),
    "explicit_be": (
        lambda f: _resaved(f, _big_endian, implicit_vr=False, little_endian=False),
        Codec.NATIVE,
    ),
    "jpegls_lossless": (lambda f: _slice(f, TransferSyntax.JPEGLS_LOSSLESS), Codec.JPEG_LS),
    # declined: pydicom decodes these
    "jpeg2000_lossless": (lambda f: _slice(f, TransferSyntax.JPEG2000_LOSSLESS), None),
    "rle_lossless": (lambda f: _slice(f, TransferSyntax.RLE_LOSSLESS), None),
    "12_bit": (
        lambda f: _resaved(f, _twelve_bit, implicit_vr=False, little_endian=True),
        None,
    ),
}


def _assert_fast_path_equals_pydicom(path: Path, codec: Codec | None) -> None:
    dataset = pydicom.dcmread(path, defer_size=DEFER_BYTES, force=True)
    layout = pixel_data_layout(dataset)
    expected = pydicom.pixels.pixel_array(path)
    if expected.ndim == 2:
        expected = expected[np.newaxis]
    if codec is None:  # declined: pydicom decodes (and masks unused bits)
        assert layout is None
        return
    assert layout is not None and layout.codec is codec
    pixels = read_pixels(path, layout)
    assert pixels is not None and pixels.dtype == expected.dtype.newbyteorder("=")
    assert np.array_equal(pixels, expected)


@pytest.mark.parametrize("encoding", sorted(PHANTOM_ENCODINGS))
def test_fast_path_equals_pydicom_on_phantom_slices(tmp_path: Path, encoding: str) -> None:
    write, codec = PHANTOM_ENCODINGS[encoding]
    path = write(tmp_path)
    assert pydicom.pixels.pixel_array(path).std() > 100  # air, soft tissue and bone
    _assert_fast_path_equals_pydicom(path, codec)


def _assert_truncated_copy_is_declined(source: Path, tmp_path: Path) -> None:
    layout = pixel_data_layout(pydicom.dcmread(source, defer_size=DEFER_BYTES, force=True))
    assert layout is not None
    truncated = tmp_path / "cut.dcm"
    truncated.write_bytes(source.read_bytes()[: layout.offset + layout.native_nbytes // 2])
    assert read_pixels(truncated, layout) is None


def test_truncated_native_file_is_declined(tmp_path: Path) -> None:
    _assert_truncated_copy_is_declined(_slice(tmp_path), tmp_path)


# --- reference data (../shared/data) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "codec"),
    [
        (f"{FILES}/MR_small.dcm", Codec.NATIVE),
        (f"{FILES}/MR_small_bigendian.dcm", Codec.NATIVE),
        (f"{FILES}/MR_small_implicit.dcm", Codec.NATIVE),
        (f"{FILES}/MR_small_jpeg_ls_lossless.dcm", Codec.JPEG_LS),  # signed 16-bit
        (f"{FILES}/CT_small.dcm", Codec.NATIVE),
        ("dicom2nifti_tests/tests/data/generic/compressed_jpegls/001/IM-0001-0001-0001.dcm", None),
        ("dicom2nifti_tests/tests/data/hyperfine/anatomical/001/001.dcm", Codec.NATIVE),
    ],
)
def test_fast_path_equals_pydicom(shared_data: Path, relative: str, codec: Codec | None) -> None:
    _assert_fast_path_equals_pydicom(shared_data / relative, codec)


def test_truncated_real_native_file_is_declined(shared_data: Path, tmp_path: Path) -> None:
    _assert_truncated_copy_is_declined(shared_data / FILES / "MR_small.dcm", tmp_path)
