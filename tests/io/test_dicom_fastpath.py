"""The pixel fast path gives exactly what pydicom decodes, or declines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pydicom.pixels
import pytest

from medseg.io.dicom_fastpath import Codec, pixel_data_layout, read_pixels
from medseg.io.dicom_scan import DEFER_BYTES

FILES = "pydicom_test_files/src/pydicom/data/test_files"


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
    path = shared_data / relative
    dataset = pydicom.dcmread(path, defer_size=DEFER_BYTES, force=True)
    layout = pixel_data_layout(dataset)
    expected = pydicom.pixels.pixel_array(path)
    if expected.ndim == 2:
        expected = expected[np.newaxis]
    if codec is None:  # 12-bit data: declined, pydicom masks the unused bits
        assert layout is None
        return
    assert layout is not None and layout.codec is codec
    pixels = read_pixels(path, layout)
    assert pixels is not None and pixels.dtype == expected.dtype.newbyteorder("=")
    assert np.array_equal(pixels, expected)


def test_truncated_native_file_is_declined(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / FILES / "MR_small.dcm"
    layout = pixel_data_layout(pydicom.dcmread(source, defer_size=DEFER_BYTES, force=True))
    assert layout is not None
    truncated = tmp_path / "cut.dcm"
    truncated.write_bytes(source.read_bytes()[: layout.offset + layout.native_nbytes // 2])
    assert read_pixels(truncated, layout) is None
