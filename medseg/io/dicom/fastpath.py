"""Fast path for pixel data: read it straight from the file, without parsing the header again.

The header scan records where the PixelData value starts (pydicom's deferred-read offset).
Decoding then seeks there and either takes the bytes as they are (native transfer syntaxes)
or hands each JPEG-LS frame to CharLS (``pyjpegls``). Anything unusual (bit depths that need
masking or sign extension, deflate, colour, other codecs, a short file) returns None and the
caller falls back to pydicom, which also produces the error messages for broken files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

logger = logging.getLogger(__name__)

PIXEL_DATA_TAG = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF
_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_JPEG_LS = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}

try:
    import jpeg_ls
except ImportError:  # pragma: no cover - pyjpegls is a dependency; pydicom remains the fallback
    jpeg_ls = None


class Codec(StrEnum):
    """How the pixel data bytes are encoded."""

    NATIVE = "native"
    JPEG_LS = "jpeg_ls"


@dataclass(frozen=True)
class PixelDataLayout:
    """Where a file's pixel data is and how to turn it into stored values."""

    codec: Codec
    offset: int  # file offset of the PixelData value
    dtype: str  # stored value type with byte order, e.g. "<i2"
    frames: int
    rows: int
    columns: int

    @property
    def native_nbytes(self) -> int:
        return self.frames * self.rows * self.columns * np.dtype(self.dtype).itemsize


def pixel_data_layout(dataset: Dataset) -> PixelDataLayout | None:
    """The fast-path layout of ``dataset``'s pixel data, or None when pydicom must decode it."""
    syntax = str(getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", "") or "")
    codec = Codec.NATIVE if syntax in _NATIVE else Codec.JPEG_LS if syntax in _JPEG_LS else None
    if codec is None or (codec is Codec.JPEG_LS and jpeg_ls is None):
        return None
    element = dataset.get_item(PIXEL_DATA_TAG, keep_deferred=True)
    offset = getattr(element, "value_tell", None)
    bits_allocated = int(dataset.get("BitsAllocated", 0) or 0)
    bits_stored = int(dataset.get("BitsStored", 0) or 0)
    if offset is None or bits_allocated not in (8, 16) or bits_stored != bits_allocated:
        return None  # e.g. 12-bit data needs masking or sign extension: pydicom does it
    if int(dataset.get("SamplesPerPixel", 1) or 1) != 1:
        return None
    signed = int(dataset.get("PixelRepresentation", 0) or 0) == 1
    order = ">" if syntax == _BIG_ENDIAN else "<"
    return PixelDataLayout(
        codec=codec,
        offset=int(offset),
        dtype=f"{order}{'i' if signed else 'u'}{bits_allocated // 8}",
        frames=int(dataset.get("NumberOfFrames", 1) or 1),
        rows=int(dataset.Rows),
        columns=int(dataset.Columns),
    )


def read_pixels(path: Path, layout: PixelDataLayout) -> np.ndarray | None:
    """Stored values as (frames, rows, columns) in native byte order, or None to fall back."""
    with open(path, "rb") as handle:
        handle.seek(layout.offset)
        if layout.codec is Codec.NATIVE:
            data = handle.read(layout.native_nbytes)
            if len(data) != layout.native_nbytes:
                return None
            pixels = np.frombuffer(data, dtype=layout.dtype)
            return pixels.reshape(layout.frames, layout.rows, layout.columns).astype(
                pixels.dtype.newbyteorder("="), copy=False
            )
        data = handle.read()
    return _decode_jpeg_ls(data, layout)


def _decode_jpeg_ls(data: bytes, layout: PixelDataLayout) -> np.ndarray | None:
    target = np.dtype(layout.dtype).newbyteorder("=")
    stack = np.empty((layout.frames, layout.rows, layout.columns), dtype=target)
    try:
        for index, codestream in enumerate(generate_frames(data, number_of_frames=layout.frames)):
            decoded = jpeg_ls.decode(np.frombuffer(codestream, np.uint8))
            if decoded.shape != (layout.rows, layout.columns):
                return None
            # CharLS returns unsigned samples; signed DICOM data reinterprets the same bits
            stack[index] = decoded.view(target)
    except Exception:  # anything odd: let pydicom decode (and explain) it
        logger.debug("JPEG-LS fast path declined", exc_info=True)
        return None
    return stack
