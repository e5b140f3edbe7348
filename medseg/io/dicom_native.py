"""Fast path for uncompressed pixel data: read the bytes straight from the file.

In a native (uncompressed) transfer syntax the pixel data is normally the last element of the
file. When the bytes just before the last ``nbytes`` of the file are exactly the PixelData
element header with that length, the pixels are those bytes; this skips a second parse of the
whole header and pydicom's per-file overhead. Anything else (trailing elements, odd bit depths,
encapsulated data) returns None and the caller falls back to pydicom.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRBigEndian, ImplicitVRLittleEndian

_NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


@dataclass(frozen=True)
class NativeLayout:
    """How a file's uncompressed pixel data is laid out."""

    dtype: str  # numpy dtype string with byte order, e.g. "<i2"
    frames: int
    rows: int
    columns: int
    big_endian: bool
    implicit_vr: bool

    @property
    def nbytes(self) -> int:
        return self.frames * self.rows * self.columns * np.dtype(self.dtype).itemsize


def native_layout(dataset: Dataset) -> NativeLayout | None:
    """The layout of ``dataset``'s pixel data if the fast path can read it, else None."""
    meta = getattr(dataset, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
    if syntax not in _NATIVE_SYNTAXES:
        return None
    bits_allocated = int(dataset.get("BitsAllocated", 0) or 0)
    bits_stored = int(dataset.get("BitsStored", 0) or 0)
    if bits_allocated not in (8, 16, 32) or bits_stored != bits_allocated:
        return None  # masking/sign extension of e.g. 12-bit data is left to pydicom
    if int(dataset.get("SamplesPerPixel", 1) or 1) != 1:
        return None
    signed = int(dataset.get("PixelRepresentation", 0) or 0) == 1
    big_endian = UID(syntax) == ExplicitVRBigEndian
    kind = "i" if signed else "u"
    dtype = f"{'>' if big_endian else '<'}{kind}{bits_allocated // 8}"
    return NativeLayout(
        dtype=dtype,
        frames=int(dataset.get("NumberOfFrames", 1) or 1),
        rows=int(dataset.Rows),
        columns=int(dataset.Columns),
        big_endian=big_endian,
        implicit_vr=UID(syntax) == ImplicitVRLittleEndian,
    )


def read_native_pixels(path: Path, layout: NativeLayout) -> np.ndarray | None:
    """Pixels as (frames, rows, columns) in native byte order, or None if the file is unusual."""
    data = path.read_bytes()
    length = layout.nbytes + layout.nbytes % 2
    start = len(data) - length
    header_size = 8 if layout.implicit_vr else 12
    if start < header_size:
        return None
    endian = ">" if layout.big_endian else "<"
    group, element = struct.unpack_from(f"{endian}HH", data, start - header_size)
    (declared,) = struct.unpack_from(f"{endian}I", data, start - 4)
    if (group, element) != (0x7FE0, 0x0010) or declared != length:
        return None
    pixels = np.frombuffer(
        data,
        dtype=layout.dtype,
        count=layout.nbytes // np.dtype(layout.dtype).itemsize,
        offset=start,
    )
    pixels = pixels.reshape(layout.frames, layout.rows, layout.columns)
    return (
        pixels.astype(pixels.dtype.newbyteorder("="), copy=False) if layout.big_endian else pixels
    )
