"""Decode the pixels of a series' frames and apply the modality LUT (rescale slope/intercept).

Each file is decoded once (a multi-frame file yields all its frames). Compressed transfer
syntaxes are decoded in parallel worker processes: the JPEG/JPEG-LS/JPEG 2000 decoders hold
the GIL, so threads would not help; uncompressed files are read in threads (I/O bound).
Philips "precise" private scaling is not applied: values follow the DICOM modality LUT.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pydicom.pixels
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from medseg.errors import DicomFileError
from medseg.io.dicom.fastpath import PixelDataLayout, read_pixels
from medseg.io.dicom.scan import FrameRecord
from medseg.parallel import process_pool

PARALLEL_MIN_FILES = 8


def default_workers() -> int:
    """Decoder processes to use: every core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# Fastest installed pydicom decoding plugin first, per transfer syntax (measured on this
# project's benchmark: CharLS via pyjpegls decodes JPEG-LS about 4x faster than pylibjpeg).
_PLUGIN_PREFERENCE = {
    "1.2.840.10008.1.2.4.80": ("pyjpegls", "gdcm", "pylibjpeg"),  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": ("pyjpegls", "gdcm", "pylibjpeg"),  # JPEG-LS near-lossless
}


@dataclass(frozen=True)
class DecodeJob:
    """One file to decode, and which of its frames go where in the series' stack."""

    path: Path
    transfer_syntax: str
    layout: PixelDataLayout | None
    targets: tuple[tuple[int, FrameRecord], ...]  # (position in the stack, frame)

    @property
    def compressed(self) -> bool:
        return bool(self.transfer_syntax) and UID(self.transfer_syntax).is_compressed


def _plugin_for(transfer_syntax: str) -> str:
    preferred = _PLUGIN_PREFERENCE.get(transfer_syntax)
    if not preferred:
        return ""
    available = set(get_decoder(UID(transfer_syntax)).available_plugins)
    return next((plugin for plugin in preferred if plugin in available), "")


def _decode_file(job: DecodeJob) -> np.ndarray:
    try:
        if job.layout is not None:
            pixels = read_pixels(job.path, job.layout)
            if pixels is not None:
                return pixels
        return pydicom.pixels.pixel_array(
            job.path, decoding_plugin=_plugin_for(job.transfer_syntax)
        )
    except Exception as exc:  # decoders raise many types for truncated or corrupt data
        raise DicomFileError(job.path, f"cannot decode pixel data: {exc}") from exc


def decode_stored_values(
    frames: Sequence[FrameRecord], *, workers: int | None = None
) -> np.ndarray:
    """Stored pixel values of ``frames``, stacked as an array of shape (frames, rows, columns)."""
    targets: dict[Path, list[tuple[int, FrameRecord]]] = defaultdict(list)
    for position, frame in enumerate(frames):
        targets[frame.path].append((position, frame))
    jobs = [
        DecodeJob(path, items[0][1].transfer_syntax, items[0][1].pixel_layout, tuple(items))
        for path, items in targets.items()
    ]
    workers = workers or default_workers()
    shape = (len(frames), frames[0].rows, frames[0].columns)
    dtype = _stored_dtype(jobs)
    parallel = workers > 1 and len(jobs) >= PARALLEL_MIN_FILES
    if parallel and dtype is not None and any(job.compressed for job in jobs):
        return _decode_in_processes(jobs, shape=shape, dtype=dtype, workers=workers)
    first = _decode_file(jobs[0])
    stack = np.empty(shape, dtype=first.dtype)
    _write_frames(stack, jobs[0], first)
    rest = jobs[1:]
    if parallel and not any(job.compressed for job in rest):
        with ThreadPoolExecutor(max_workers=workers) as threads:  # file reads release the GIL
            list(threads.map(lambda job: _write_frames(stack, job, _decode_file(job)), rest))
    else:
        for job in rest:
            _write_frames(stack, job, _decode_file(job))
    return stack


def _stored_dtype(jobs: list[DecodeJob]) -> np.dtype | None:
    """The stored value type when every file's layout is known before decoding."""
    dtypes = {job.layout.dtype for job in jobs if job.layout is not None}
    if len(dtypes) != 1 or any(job.layout is None for job in jobs):
        return None
    return np.dtype(dtypes.pop()).newbyteorder("=")


def _write_frames(stack: np.ndarray, job: DecodeJob, pixels: np.ndarray) -> None:
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    if pixels.dtype != stack.dtype:
        raise DicomFileError(
            job.path, f"pixel type {pixels.dtype} differs from the series' {stack.dtype}"
        )
    for position, frame in job.targets:
        stack[position] = _frame_pixels(pixels, frame)


def _decode_in_processes(
    jobs: list[DecodeJob], *, shape: tuple[int, int, int], dtype: np.dtype, workers: int
) -> np.ndarray:
    """Decode in worker processes that write straight into one shared-memory stack."""
    nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
    memory = shared_memory.SharedMemory(create=True, size=nbytes)
    try:
        write = partial(_decode_into_shared, name=memory.name, shape=shape, dtype=dtype.str)
        with process_pool(workers, start_method=None) as processes:
            list(processes.map(write, jobs, chunksize=max(1, len(jobs) // (workers * 4))))
        return np.ndarray(shape, dtype=dtype, buffer=memory.buf).copy()
    finally:
        memory.close()
        memory.unlink()


def _decode_into_shared(job: DecodeJob, *, name: str, shape: tuple, dtype: str) -> None:
    memory = shared_memory.SharedMemory(name=name)  # the parent owns and unlinks the block
    try:
        stack = np.ndarray(shape, dtype=np.dtype(dtype), buffer=memory.buf)
        _write_frames(stack, job, _decode_file(job))
        del stack
    finally:
        memory.close()


def _frame_pixels(pixels: np.ndarray, frame: FrameRecord) -> np.ndarray:
    """The (rows, columns) pixels of ``frame`` within its file's decoded (frames, rows, cols)."""
    index = frame.frame_index or 0
    if frame.mosaic_grid:
        block_row, block_col = divmod(index, frame.mosaic_grid)
        return pixels[
            0,
            block_row * frame.rows : (block_row + 1) * frame.rows,
            block_col * frame.columns : (block_col + 1) * frame.columns,
        ]
    if index >= pixels.shape[0] or pixels.shape[1:] != (frame.rows, frame.columns):
        raise DicomFileError(
            frame.path,
            f"pixel data has shape {pixels.shape}, header promises frame {index + 1} "
            f"of {frame.rows}x{frame.columns}",
        )
    return pixels[index]


def apply_modality_lut(stored: np.ndarray, frames: Sequence[FrameRecord]) -> np.ndarray:
    """Apply each frame's RescaleSlope/RescaleIntercept; keep integers when results are integral.

    Output dtype: int16 when every value fits, else uint16 or int32, for an identity slope with
    integral intercepts; float32 otherwise.
    """
    slopes = np.array([frame.rescale_slope for frame in frames])
    intercepts = np.array([frame.rescale_intercept for frame in frames])
    integral = np.all(slopes == 1.0) and np.all(intercepts == np.round(intercepts))
    if not integral:
        result = stored.astype(np.float32)
        result *= slopes.astype(np.float32)[:, None, None]
        result += intercepts.astype(np.float32)[:, None, None]
        return result
    low = float(stored.min()) + float(intercepts.min())
    high = float(stored.max()) + float(intercepts.max())
    dtype = _smallest_integer_dtype(low, high)
    if np.all(intercepts == 0) and stored.dtype == dtype:
        return stored
    result = stored.astype(dtype)
    if np.all(intercepts == intercepts[0]):
        result += dtype.type(intercepts[0])
    else:
        result += intercepts.astype(dtype)[:, None, None]
    return result


def _smallest_integer_dtype(low: float, high: float) -> np.dtype:
    for candidate in (np.int16, np.uint16, np.int32):
        info = np.iinfo(candidate)
        if info.min <= low and high <= info.max:
            return np.dtype(candidate)
    return np.dtype(np.float32)
