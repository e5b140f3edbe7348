"""Write a ``Volume`` as a DICOM CT Image Storage series: one file per slice ``k``.

Used by the demo and by tests to produce series whose geometry is known exactly. The
geometry follows ``medseg.volume``: ``array[i, j, k]`` with ``i`` the column index (along the
first ImageOrientationPatient vector), ``j`` the row index and ``k`` the slice index; the RAS
affine is converted to DICOM's LPS by negating x and y.

Two things are deliberately unfriendly, so that readers are tested against real-world series:

* InstanceNumber is a shuffled permutation of ``1..K``, not the spatial order. Scanners do not
  promise that InstanceNumber follows position (reconstructions, reversed stacks, merged
  series), so a reader must sort along the slice normal; one that sorts by InstanceNumber (or
  by the numbered file names, which follow InstanceNumber) gets a scrambled volume here.
* Identifying attributes hold obviously fake values (``FAKE_PHI`` plus the patient name and ID
  given by the caller), so pipeline tests can check that none of them leaks into outputs.

A reader that sorts slices by position along the normal ``row x column`` returns this very
grid when the affine is right-handed (its k axis points along ``i x j``); for a left-handed
affine it returns the grid with ``k`` reversed. ``to_dicom_slice_order`` gives that grid.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_encoder
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from medseg.errors import DicomWriteError, UnknownChoiceError
from medseg.io.atomic import atomic_path
from medseg.lookup import look_up_option
from medseg.parallel import process_pool
from medseg.volume import Volume

logger = logging.getLogger(__name__)

FileNaming = Literal["numbered", "uid"]

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
_INT16_MIN, _INT16_MAX = -32768, 32767
_ORTHOGONALITY_TOL = 1e-6
_J2K_MIN_SIZE = 32

# Identifying attributes filled with values no real record has; pipeline tests assert they
# are stripped. PatientName and PatientID come from the caller.
FAKE_PHI: dict[str, str] = {
    "PatientBirthDate": "19010101",
    "AccessionNumber": "FAKEACC00000001",
    "InstitutionName": "FAKE PHANTOM HOSPITAL",
    "ReferringPhysicianName": "FAKE^REFERRER",
    "OperatorsName": "FAKE^OPERATOR",
}


class TransferSyntax(enum.StrEnum):
    """Transfer syntaxes the writer produces; all lossless, so voxels round-trip exactly."""

    EXPLICIT_LE = "explicit_le"
    JPEGLS_LOSSLESS = "jpegls_lossless"
    RLE_LOSSLESS = "rle_lossless"
    JPEG2000_LOSSLESS = "jpeg2000_lossless"

    @property
    def uid(self) -> UID:
        """The DICOM Transfer Syntax UID."""
        return _TRANSFER_SYNTAX_UIDS[self]


_TRANSFER_SYNTAX_UIDS: dict[TransferSyntax, UID] = {
    TransferSyntax.EXPLICIT_LE: ExplicitVRLittleEndian,
    TransferSyntax.JPEGLS_LOSSLESS: JPEGLSLossless,
    TransferSyntax.RLE_LOSSLESS: RLELossless,
    TransferSyntax.JPEG2000_LOSSLESS: JPEG2000Lossless,
}

# Preferred pydicom encoding plugin per compressed syntax, fastest first. pydicom's own RLE
# encoder is pure Python and much slower than pylibjpeg-rle (Rust) or GDCM.
_PLUGIN_PREFERENCE: dict[TransferSyntax, tuple[str, ...]] = {
    TransferSyntax.JPEGLS_LOSSLESS: ("pyjpegls",),
    TransferSyntax.RLE_LOSSLESS: ("pylibjpeg", "gdcm", "pydicom"),
    TransferSyntax.JPEG2000_LOSSLESS: ("pylibjpeg",),
}


def parse_transfer_syntax(value: TransferSyntax | str) -> TransferSyntax:
    """``value`` as a ``TransferSyntax``.

    Raises:
        DicomWriteError: ``value`` is not one of the supported names.
    """
    try:
        return look_up_option(value, TransferSyntax, what="transfer syntax")
    except UnknownChoiceError as error:
        raise DicomWriteError("transfer_syntax", str(error)) from None


def encoding_plugin(transfer_syntax: TransferSyntax | str) -> str:
    """Name of the pydicom encoding plugin used for ``transfer_syntax`` ("" if uncompressed).

    Raises:
        DicomWriteError: no plugin for the syntax is installed (names the missing packages).
    """
    syntax = parse_transfer_syntax(transfer_syntax)
    if syntax is TransferSyntax.EXPLICIT_LE:
        return ""
    encoder = get_encoder(syntax.uid)
    available = set(encoder.available_plugins)
    for plugin in _PLUGIN_PREFERENCE[syntax]:
        if plugin in available:
            return plugin
    raise DicomWriteError(
        syntax.value,
        f"no pydicom encoder plugin available ({'; '.join(encoder.missing_dependencies)})",
    )


@dataclass(frozen=True)
class SeriesGeometry:
    """DICOM geometry of a slice stack, in LPS millimetres.

    Attributes:
        orientation: ImageOrientationPatient (row cosine = i direction, column cosine = j).
        pixel_spacing_mm: PixelSpacing in DICOM order: (row spacing = j step, column spacing =
            i step).
        slice_spacing_mm: distance between successive slice planes along the normal.
        positions_lps: ImagePositionPatient of voxel (0, 0, k), one row per slice.
        normal: unit slice normal, ``row x column``.
    """

    orientation: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    slice_spacing_mm: float
    positions_lps: np.ndarray
    normal: np.ndarray


def series_geometry(affine_ras: np.ndarray, *, n_slices: int) -> SeriesGeometry:
    """DICOM geometry of ``n_slices`` slices of the grid ``affine_ras`` (voxel -> RAS mm).

    Raises:
        DicomWriteError: the i and j axes are not perpendicular (not representable in DICOM).
    """
    affine_lps = _LPS_FROM_RAS @ np.asarray(affine_ras, dtype=np.float64)[:3]
    step_i, step_j, step_k, origin = affine_lps.T
    spacing_i, spacing_j = float(np.linalg.norm(step_i)), float(np.linalg.norm(step_j))
    row, col = step_i / spacing_i, step_j / spacing_j
    if abs(float(row @ col)) > _ORTHOGONALITY_TOL:
        raise DicomWriteError(
            "affine", f"i and j axes are not perpendicular (cosine {row @ col:.2e})"
        )
    normal = np.cross(row, col)
    positions = origin[None, :] + np.arange(n_slices)[:, None] * step_k[None, :]
    return SeriesGeometry(
        orientation=np.concatenate([row, col]),
        pixel_spacing_mm=(spacing_j, spacing_i),
        slice_spacing_mm=abs(float(step_k @ normal)),
        positions_lps=positions,
        normal=normal,
    )


def to_dicom_slice_order(volume: Volume) -> Volume:
    """The grid a reader that sorts slices along ``row x column`` builds from this volume.

    Identical to ``volume`` when its affine is right-handed; otherwise ``k`` is reversed.
    """
    affine = volume.affine_ras
    if np.linalg.det(affine[:3, :3]) > 0:
        return volume
    n_slices = volume.shape[2]
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1.0, n_slices - 1
    array = np.ascontiguousarray(volume.array[:, :, ::-1])
    return Volume(array, affine @ flip, dict(volume.metadata))


@dataclass(frozen=True)
class _SliceJob:
    """Everything one worker needs to write one slice file."""

    path: Path
    header: dict[str, Any]
    pixels: np.ndarray  # int16, (rows, columns)
    transfer_syntax: TransferSyntax
    plugin: str


def write_dicom_series(
    volume: Volume,
    out_dir: Path,
    *,
    series_description: str,
    patient_id: str,
    patient_name: str = "PHANTOM^DEMO",
    study_uid: str | None = None,
    series_number: int = 1,
    transfer_syntax: TransferSyntax | str = TransferSyntax.EXPLICIT_LE,
    rescale_intercept: float = -1024.0,
    rescale_slope: float = 1.0,
    file_names: FileNaming = "numbered",
    name_prefix: str = "IM",
    name_suffix: str = ".dcm",
    uid_seed: str | None = None,
    shuffle_instance_numbers: bool = True,
    workers: int = 1,
) -> list[Path]:
    """Write ``volume`` (values in HU) as a CT Image Storage series, one file per slice.

    Args:
        volume: 3D scan; ``array[:, :, k]`` becomes slice ``k`` (rows = j, columns = i).
        out_dir: folder for the series; created if missing, must be empty if it exists.
        series_description: SeriesDescription.
        patient_id: PatientID (use a fake value).
        patient_name: PatientName (use a fake value).
        study_uid: StudyInstanceUID to join an existing study; a new one if None.
        series_number: SeriesNumber.
        transfer_syntax: one of ``TransferSyntax`` (or its string value).
        rescale_intercept: RescaleIntercept; stored value = round((HU - intercept) / slope).
        rescale_slope: RescaleSlope.
        file_names: ``"numbered"`` -> ``{name_prefix}{InstanceNumber:04d}{name_suffix}``;
            ``"uid"`` -> the SOPInstanceUID with no extension (discovery must read content).
        name_prefix: prefix of numbered file names (may contain spaces).
        name_suffix: suffix of numbered file names, e.g. ``".dcm"`` or ``""``.
        uid_seed: when given, UIDs and the InstanceNumber shuffle derive from it, so the same
            call writes byte-identical files; when None they are fresh and random. Use one
            seed per series: two series written with the same seed share their UIDs.
        shuffle_instance_numbers: InstanceNumber out of spatial order (the default, as some
            archive exports are: readers must sort by position); False numbers the slices in
            spatial order, as scanners do (readers that stack by InstanceNumber need it).
        workers: processes that encode and write slices. Pays off only for JPEG 2000 (about
            1.3x with 2 workers for 200 x 512 x 512); workers are spawned, so a calling
            script needs the usual ``if __name__ == "__main__":`` guard.

    Returns:
        The written files, in slice order: ``paths[k]`` holds ``array[:, :, k]``.

    Raises:
        DicomWriteError: the volume is not 3D, values are not finite or do not fit int16 after
            rescaling, the in-plane axes are not perpendicular, out_dir is not empty, the
            syntax or naming is unknown, no encoder exists, or JPEG 2000 slices are under
            32 x 32 pixels.
    """
    syntax = parse_transfer_syntax(transfer_syntax)
    plugin = encoding_plugin(syntax)
    if file_names not in ("numbered", "uid"):
        raise DicomWriteError("file_names", f"must be 'numbered' or 'uid', got {file_names!r}")
    _check_writable(volume, out_dir, rescale_slope=rescale_slope, transfer_syntax=syntax)
    n_slices = volume.shape[2]
    geometry = series_geometry(volume.affine_ras, n_slices=n_slices)
    uids = _UidSource(uid_seed)
    instance_numbers = (
        _shuffled_instance_numbers(n_slices, uid_seed)
        if shuffle_instance_numbers
        else np.arange(1, n_slices + 1)
    )
    common = _common_header(
        volume,
        geometry=geometry,
        series_description=series_description,
        patient_name=patient_name,
        patient_id=patient_id,
        study_uid=study_uid or uids.make("study"),
        series_uid=uids.make("series"),
        frame_of_reference_uid=uids.make("frame_of_reference"),
        series_number=series_number,
        rescale=(rescale_intercept, rescale_slope),
    )

    jobs = _slice_jobs(
        volume,
        Path(out_dir),
        common=common,
        geometry=geometry,
        instance_numbers=instance_numbers,
        uids=uids,
        naming=(file_names, name_prefix, name_suffix),
        rescale=(rescale_intercept, rescale_slope),
        encoding=(syntax, plugin),
    )
    paths = _run_jobs(jobs, workers=workers, n_slices=n_slices)
    logger.info("wrote %d-slice %s series to %s", n_slices, syntax.value, out_dir)
    return paths


def _check_writable(
    volume: Volume, out_dir: Path, *, rescale_slope: float, transfer_syntax: TransferSyntax
) -> None:
    if volume.array.ndim != 3:
        raise DicomWriteError(out_dir, f"expected a 3D volume, got shape {volume.shape}")
    if (
        transfer_syntax is TransferSyntax.JPEG2000_LOSSLESS
        and min(volume.shape[:2]) < _J2K_MIN_SIZE
    ):
        raise DicomWriteError(
            out_dir,
            f"JPEG 2000 needs slices of at least {_J2K_MIN_SIZE} x {_J2K_MIN_SIZE} pixels "
            f"(openjpeg encodes 6 wavelet resolutions), got {volume.shape[1]} x {volume.shape[0]}",
        )
    if rescale_slope == 0:
        raise DicomWriteError(out_dir, "rescale_slope must not be 0")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DicomWriteError(out_dir, "output path exists and is not a folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DicomWriteError(
            out_dir, "output folder is not empty; a series folder holds one series"
        )


def _slice_jobs(
    volume: Volume,
    out_dir: Path,
    *,
    common: dict[str, Any],
    geometry: SeriesGeometry,
    instance_numbers: np.ndarray,
    uids: _UidSource,
    naming: tuple[FileNaming, str, str],
    rescale: tuple[float, float],
    encoding: tuple[TransferSyntax, str],
) -> Iterator[_SliceJob]:
    """One job per slice, built lazily so at most a few slices of pixels exist at once."""
    file_names, prefix, suffix = naming
    for k in range(volume.shape[2]):
        header = dict(common)
        header.update(_slice_header(geometry, k=k, instance_number=int(instance_numbers[k])))
        header["SOPInstanceUID"] = uids.make(f"instance-{k}")
        if file_names == "uid":
            name = header["SOPInstanceUID"]
        else:
            name = f"{prefix}{header['InstanceNumber']:04d}{suffix}"
        pixels = _stored_pixels(volume.array[:, :, k], intercept=rescale[0], slope=rescale[1], k=k)
        yield _SliceJob(out_dir / name, header, pixels, *encoding)


class _UidSource:
    """Fresh random UIDs, or UIDs derived from a seed string for reproducible files."""

    def __init__(self, seed: str | None) -> None:
        self._seed = seed

    def make(self, role: str) -> str:
        if self._seed is None:
            return str(generate_uid())
        return str(generate_uid(entropy_srcs=[self._seed, role]))


def _shuffled_instance_numbers(n_slices: int, seed: str | None) -> np.ndarray:
    """A permutation of 1..n that is never the spatial order (nor its reverse) when n > 2."""
    entropy = None if seed is None else int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8])
    rng = np.random.default_rng(entropy)
    numbers = np.arange(1, n_slices + 1)
    if n_slices <= 2:
        return numbers[::-1].copy()
    shuffled = rng.permutation(numbers)
    while np.array_equal(shuffled, numbers) or np.array_equal(shuffled, numbers[::-1]):
        shuffled = rng.permutation(numbers)
    return shuffled


def _ds(value: float) -> str:
    """A float as a valid DICOM decimal string (at most 16 characters)."""
    return format_number_as_ds(float(value))


def _common_header(
    volume: Volume,
    *,
    geometry: SeriesGeometry,
    series_description: str,
    patient_name: str,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    frame_of_reference_uid: str,
    series_number: int,
    rescale: tuple[float, float],
) -> dict[str, Any]:
    """Attributes shared by every slice (patient, study, series, frame of reference, pixels)."""
    rows, columns = volume.shape[1], volume.shape[0]
    header: dict[str, Any] = {
        "SOPClassUID": CTImageStorage,
        "Modality": "CT",
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "PatientName": patient_name,
        "PatientID": patient_id,
        "PatientSex": "O",
        "StudyInstanceUID": study_uid,
        "StudyDate": "20000101",
        "StudyTime": "120000",
        "StudyID": "1",
        "StudyDescription": "medseg synthetic phantom",
        "SeriesInstanceUID": series_uid,
        "SeriesNumber": int(series_number),
        "SeriesDescription": series_description,
        "SeriesDate": "20000101",
        "SeriesTime": "120000",
        "ContentDate": "20000101",
        "ContentTime": "120000",
        "Manufacturer": "medseg",
        "ManufacturerModelName": "synthetic phantom",
        "PatientPosition": "HFS",
        "FrameOfReferenceUID": frame_of_reference_uid,
        "PositionReferenceIndicator": "",
        "ImageOrientationPatient": [_ds(v) for v in geometry.orientation],
        "PixelSpacing": [_ds(v) for v in geometry.pixel_spacing_mm],
        "SliceThickness": _ds(geometry.slice_spacing_mm),
        "SpacingBetweenSlices": _ds(geometry.slice_spacing_mm),
        "KVP": "120",
        "Rows": rows,
        "Columns": columns,
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "BitsAllocated": 16,
        "BitsStored": 16,
        "HighBit": 15,
        "PixelRepresentation": 1,
        "RescaleIntercept": _ds(rescale[0]),
        "RescaleSlope": _ds(rescale[1]),
        "RescaleType": "HU",
        "WindowCenter": "40",
        "WindowWidth": "400",
    }
    header.update(FAKE_PHI)
    return header


def _slice_header(geometry: SeriesGeometry, *, k: int, instance_number: int) -> dict[str, Any]:
    position = geometry.positions_lps[k]
    return {
        "InstanceNumber": instance_number,
        "ImagePositionPatient": [_ds(v) for v in position],
        "SliceLocation": _ds(float(position @ geometry.normal)),
    }


def _stored_pixels(hu_slice: np.ndarray, *, intercept: float, slope: float, k: int) -> np.ndarray:
    """Stored int16 values of one slice, transposed to (rows = j, columns = i)."""
    if np.issubdtype(hu_slice.dtype, np.integer) and slope == 1 and float(intercept).is_integer():
        stored = hu_slice.astype(np.int32) - int(intercept)
    else:
        stored = np.rint((hu_slice.astype(np.float64) - intercept) / slope)
    if not np.all(np.isfinite(stored)):
        raise DicomWriteError(f"slice {k}", "contains NaN or infinite values")
    low, high = stored.min(), stored.max()
    if low < _INT16_MIN or high > _INT16_MAX:
        raise DicomWriteError(
            f"slice {k}",
            f"stored values {low:.0f}..{high:.0f} do not fit int16 with intercept {intercept} "
            f"and slope {slope}",
        )
    return np.ascontiguousarray(stored.T, dtype="<i2")


def _run_jobs(jobs: Iterator[_SliceJob], *, workers: int, n_slices: int) -> list[Path]:
    if workers <= 1 or n_slices < 2:
        return [_write_slice(job) for job in jobs]
    # spawn: the parent may hold threads (torch, BLAS) that make fork unsafe.
    chunksize = max(1, n_slices // (workers * 4))
    with process_pool(workers, start_method="spawn") as pool:
        return list(pool.map(_write_slice, jobs, chunksize=chunksize))


def _write_slice(job: _SliceJob) -> Path:
    """Build one slice's dataset, encode its pixels and save it atomically."""
    ds = Dataset()
    for keyword, value in job.header.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if job.transfer_syntax is TransferSyntax.EXPLICIT_LE:
        ds.PixelData = job.pixels.tobytes()
    else:
        ds.compress(
            job.transfer_syntax.uid,
            job.pixels,
            encoding_plugin=job.plugin,
            generate_instance_uid=False,
        )
    ds.preamble = b"\x00" * 128
    with atomic_path(job.path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return job.path
