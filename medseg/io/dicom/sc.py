"""A medseg SEG and its organ volumes -> one RGB Secondary Capture picture for any PACS viewer.

Not every viewer displays a SEG or reads an SR, but every one shows a Secondary Capture image.
The picture (``CAPTURE_WIDTH`` x ``CAPTURE_HEIGHT`` pixels, RGB, 8 bits) shows the source slice
with the most segmented pixels, the segments on it as semi-transparent fills with outlines, a
table of every structure's colour, name and volume, and the burned-in line
"medseg <version> — automatic segmentation, not for diagnosis without review".

Decisions:

* The slice: every SEG frame names the source instance it was made from
  (DerivationImageSequence > SourceImageSequence) and its segment; the instance with the most
  segmented pixels over all its frames is drawn. Frames are decoded one at a time, so a SEG
  of a long series with many segments never sits in memory whole. FRACTIONAL frames count a
  pixel from half the maximum fractional value.
* The source image comes from ``source_files``, matched by SOPInstanceUID, and is drawn pixel
  for pixel as stored (row 0 at the top, as a viewer shows it; SEG frames share its grid)
  with its pixel aspect ratio. CT is windowed to soft tissue (W400/L40 HU), other modalities
  to the 1st-99th percentile of the slice. ``source_files=None`` draws the segments on black
  and says so; files that do not hold the slice raise ``OverlayCaptureError`` (wrong series)
  rather than silently dropping the anatomy.
* Colours come from a fixed qualitative palette indexed by segment number (greys left out so
  no segment looks like tissue), so the same structure has the same colour in every capture
  of the same model. When the table has more rows than fit, it lists the structures drawn on
  the slice and counts the others, whose volumes are in the SR.
* Burned-in text is built only from constants, the medseg version, segment labels, volumes,
  and the source's series and instance numbers: never from patient, study or date attributes.
  BurnedInAnnotation is YES because the picture carries the disclaimer and the table.
* The instance joins the SEG's study: highdicom's ``SCImage.from_ref_dataset`` with the SEG as
  reference, then the full Patient and Study modules copied from it, as the SR does.
  ConversionType WSD (workstation); PatientOrientation from the slice's orientation, since the
  slice is drawn unrotated; no PixelSpacing, because the picture is rescaled.
* Identity and time are deterministic as for the SR (``medseg.io.dicom.sr``): UIDs from the
  SEG's SOPInstanceUID and ``"sc"``, timestamps from the SEG's content time, so the same SEG
  gives the same bytes and a PACS files a re-sent capture once. Series number: SEG's + 2.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import highdicom as hd
import matplotlib
import numpy as np
import pydicom
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.transforms import Transform
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, iter_pixels, pixel_array
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from medseg import __version__
from medseg.errors import DicomFileError, OverlayCaptureError
from medseg.io.atomic import atomic_path
from medseg.io.dicom.seg import MANUFACTURER, _highdicom_quiet, derived_series_number
from medseg.io.dicom.sr import (
    SegmentVolume,
    content_time_arguments,
    content_timestamp,
    derived_uid,
    fix_provenance,
    match_volumes,
    read_segmentation,
)

logger = logging.getLogger(__name__)

CAPTURE_WIDTH, CAPTURE_HEIGHT, CAPTURE_DPI = 1024, 768, 100
SC_SERIES_NUMBER_OFFSET = 2  # SC series number = SEG series number + this
SERIES_DESCRIPTION = "medseg overlay"
DISCLAIMER = f"medseg {__version__} — automatic segmentation, not for diagnosis without review"
CT_WINDOW = (400.0, 40.0)  # width, level in HU: soft tissue
FILL_ALPHA = 0.35
_IMAGE_BOX = (0.01, 0.03, 0.66, 0.86)  # left, bottom, width, height in figure fractions
_TABLE_BOX = (0.69, 0.03, 0.30, 0.86)
_MAX_ROW_PX, _MIN_ROW_PX = 24.0, 15.0
_LPS_LETTERS = (("R", "L"), ("A", "P"), ("F", "H"))  # (negative, positive) along x, y, z


@dataclass(frozen=True)
class _Slice:
    """The source instance drawn and the masks of the segments on it."""

    sop_class_uid: str
    sop_instance_uid: str
    masks: dict[int, np.ndarray]  # segment number -> (rows, columns) bool
    frame_numbers: list[int]  # 1-based SEG frames drawn


def write_overlay_capture(
    seg_path: Path,
    source_files: Sequence[Path] | None,
    volumes_ml: Mapping[str, float],
    *,
    out_path: Path,
) -> Path:
    """Write an RGB Secondary Capture of the busiest source slice with the SEG drawn on it.

    The capture joins the SEG's study, with the SEG's patient and study modules (as identifying
    as the SEG; nothing of them is logged or drawn), in its own series "medseg overlay".

    Args:
        seg_path: a DICOM Segmentation (BINARY or FRACTIONAL), e.g. from ``write_dicom_seg``.
        source_files: the files of the series the SEG was made from (e.g.
            ``DicomSeries.files``); None draws the segments without the image.
        volumes_ml: volume in millilitres per structure, keyed by segment label; exactly one
            entry per segment of the SEG.
        out_path: the file to write (atomically; parent folders are created).

    Returns:
        ``out_path``.

    Raises:
        DicomFileError: the SEG or a source file cannot be read as DICOM.
        VolumeReportError: the file is not a BINARY/FRACTIONAL SEG, or ``volumes_ml`` does not
            name exactly its segments or holds a negative or non-finite volume.
        OverlayCaptureError: no SEG frame names a source image, ``source_files`` lack the
            slice or it does not match the SEG's frames.

    Example:
        >>> write_overlay_capture(
        ...     Path("out/seg.dcm"), series.files, {"liver": 1510.2, "spleen": 182.4},
        ...     out_path=Path("out/overlay.dcm"))
    """
    seg = read_segmentation(seg_path)
    segments = match_volumes(seg, volumes_ml)
    drawn = _busiest_slice(seg_path, seg)
    source = None if source_files is None else _read_source(source_files, drawn, seg)
    orientation = _orientation(seg, source)
    pixels = _render(segments, drawn, source, orientation, seg)
    references = [_reference(seg.SOPClassUID, seg.SOPInstanceUID, drawn.frame_numbers)]
    if source is not None:
        references.insert(0, _reference(drawn.sop_class_uid, drawn.sop_instance_uid))
    with _highdicom_quiet():
        capture = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=seg,
            pixel_array=pixels,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=derived_uid(seg, "sc", "series"),
            series_number=derived_series_number(seg, SC_SERIES_NUMBER_OFFSET),
            sop_instance_uid=derived_uid(seg, "sc", "instance"),
            instance_number=1,
            manufacturer=MANUFACTURER,
            patient_orientation=_patient_orientation(orientation),
            transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description=SERIES_DESCRIPTION,
            manufacturer_model_name=MANUFACTURER,
            software_versions=__version__,
            **content_time_arguments(content_timestamp(seg)),
        )
    capture.copy_patient_and_study_information(seg)
    capture.ConversionType = hd.sc.ConversionTypeValues.WSD.value
    capture.BurnedInAnnotation = "YES"
    capture.DerivationDescription = "source slice with segmentation overlay and organ volumes"
    capture.SourceImageSequence = references
    fix_provenance(capture, seg)
    timestamp = content_timestamp(seg)
    if timestamp is not None:
        # highdicom sets DA/TM values; pydicom stores the DICOM strings as given, as before
        capture.DateOfSecondaryCapture = timestamp[0]  # type: ignore[assignment]
        capture.TimeOfSecondaryCapture = timestamp[1]  # type: ignore[assignment]
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        capture.save_as(tmp, enforce_file_format=True)
    logger.info(
        "wrote DICOM secondary capture of %d segment(s) on the busiest slice to %s",
        len(drawn.masks),
        out_path,
    )
    return out_path


def _frame_references(seg: Dataset) -> list[tuple[str, str, int]]:
    """(source SOP class, source SOP instance, segment number) of every SEG frame."""
    shared = (seg.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    frames = seg.get("PerFrameFunctionalGroupsSequence") or ()
    if len(frames) != int(seg.get("NumberOfFrames") or 1):
        raise OverlayCaptureError("the SEG's per-frame functional groups do not match its frames")
    references = []
    for item in frames:
        identification = item.get("SegmentIdentificationSequence") or shared.get(
            "SegmentIdentificationSequence"
        )
        derivations = item.get("DerivationImageSequence") or shared.get("DerivationImageSequence")
        sources = (derivations[0].get("SourceImageSequence") or ()) if derivations else ()
        if not identification or not sources:
            references.append(("", "", 0))  # a frame that names no source cannot be placed
            continue
        references.append(
            (
                str(sources[0].ReferencedSOPClassUID),
                str(sources[0].ReferencedSOPInstanceUID),
                int(identification[0].ReferencedSegmentNumber),
            )
        )
    return references


def _busiest_slice(seg_path: Path, seg: Dataset) -> _Slice:
    """The source instance with the most segmented pixels and the masks drawn on it."""
    references = _frame_references(seg)
    threshold = _foreground_threshold(seg)
    counts: dict[str, int] = {}
    for (_, instance, _), frame in zip(references, _seg_frames(seg_path, seg), strict=True):
        if instance:
            counts[instance] = counts.get(instance, 0) + int(np.count_nonzero(frame >= threshold))
    if not counts:
        raise OverlayCaptureError(
            f"{seg_path}: no SEG frame names the source image it was made from"
        )
    busiest = max(counts, key=counts.__getitem__)  # first of equals, in frame order
    indices = [index for index, ref in enumerate(references) if ref[1] == busiest]
    masks: dict[int, np.ndarray] = {}
    for index, frame in zip(indices, _seg_frames(seg_path, seg, indices), strict=True):
        number = references[index][2]
        mask = frame >= threshold
        masks[number] = masks[number] | mask if number in masks else mask
    return _Slice(
        sop_class_uid=references[indices[0]][0],
        sop_instance_uid=busiest,
        masks={number: mask for number, mask in sorted(masks.items()) if mask.any()},
        frame_numbers=[index + 1 for index in indices],
    )


def _seg_frames(
    seg_path: Path, seg: Dataset, indices: Sequence[int] | None = None
) -> Iterator[np.ndarray]:
    """The SEG's frames (all, or those at ``indices``), one (rows, columns) array each.

    pydicom 3.0 cannot decode one single-bit frame that does not start on a byte boundary
    (rows x columns not a multiple of 8; fixed upstream by pydicom pull request 2140), so such
    a SEG is decoded whole, which pydicom gets right.
    """
    if int(seg.BitsAllocated) != 1 or (int(seg.Rows) * int(seg.Columns)) % 8 == 0:
        yield from iter_pixels(seg_path, indices=indices)
        return
    frames = pixel_array(seg_path).reshape(-1, int(seg.Rows), int(seg.Columns))
    yield from (frames[index] for index in (range(len(frames)) if indices is None else indices))


def _foreground_threshold(seg: Dataset) -> int:
    """Smallest stored value that counts as inside a segment."""
    if seg.SegmentationType == "FRACTIONAL":
        return max(1, (int(seg.get("MaximumFractionalValue") or 255) + 1) // 2)
    return 1


def _read_source(source_files: Sequence[Path], drawn: _Slice, seg: Dataset) -> Dataset:
    """The source image of the drawn slice, with pixel data, from ``source_files``."""
    for path in (Path(p) for p in source_files):
        header = _read_dicom(path, header_only=True)
        if str(header.get("SOPInstanceUID", "")) != drawn.sop_instance_uid:
            continue
        source = _read_dicom(path, header_only=False)
        if int(source.get("NumberOfFrames") or 1) != 1:
            raise OverlayCaptureError(f"{path}: multi-frame source images are not supported")
        if (source.get("Rows"), source.get("Columns")) != (seg.Rows, seg.Columns):
            raise OverlayCaptureError(
                f"{path}: {source.get('Rows')} x {source.get('Columns')} pixels, but the SEG's "
                f"frames have {seg.Rows} x {seg.Columns}"
            )
        return source
    raise OverlayCaptureError(
        f"none of the {len(source_files)} source file(s) is the image the SEG's busiest slice "
        "was made from: pass the files of the series the SEG segments"
    )


def _read_dicom(path: Path, *, header_only: bool) -> Dataset:
    try:
        if header_only:
            return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        return pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DicomFileError(path, f"unreadable DICOM file: {exc}") from exc


def _orientation(seg: Dataset, source: Dataset | None) -> np.ndarray:
    """ImageOrientationPatient (6,) of the drawn slice: the source's, else the SEG's planes."""
    values = source.get("ImageOrientationPatient") if source is not None else None
    if not values:
        shared = (seg.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
        planes = shared.get("PlaneOrientationSequence") or ()
        values = planes[0].get("ImageOrientationPatient") if planes else None
    if not values or len(values) != 6:
        raise OverlayCaptureError("neither the SEG nor the source image gives the orientation")
    return np.array([float(v) for v in values])


def _patient_orientation(orientation: np.ndarray) -> tuple[str, str]:
    """PatientOrientation: the main patient direction of increasing column, then row index."""
    return _direction_letter(orientation[:3]), _direction_letter(orientation[3:])


def _direction_letter(vector: np.ndarray, *, sign: float = 1.0) -> str:
    axis = int(np.argmax(np.abs(vector)))
    return _LPS_LETTERS[axis][int(sign * vector[axis] > 0)]


def _pixel_aspect(seg: Dataset, source: Dataset | None) -> float:
    """Row spacing / column spacing (1 when unknown)."""
    spacing = source.get("PixelSpacing") if source is not None else None
    if not spacing:
        shared = (seg.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
        measures = shared.get("PixelMeasuresSequence") or ()
        spacing = measures[0].get("PixelSpacing") if measures else None
    if spacing is None:
        return 1.0
    try:
        row, column = (float(v) for v in spacing)
    except (TypeError, ValueError):
        return 1.0
    return row / column if row > 0 and column > 0 else 1.0


def _palette() -> list[tuple[float, float, float]]:
    """Distinct, saturated colours without greys, for segment numbers 1, 2, ..."""
    colours: list[tuple[float, float, float]] = []
    for name in ("tab10", "tab20b", "tab20c", "Dark2"):
        for colour in matplotlib.colormaps[name].colors:  # type: ignore[attr-defined]
            rgb = (float(colour[0]), float(colour[1]), float(colour[2]))
            if max(rgb) - min(rgb) > 0.15 and rgb not in colours:
                colours.append(rgb)
    return colours


def _colour(number: int, palette: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    return palette[(number - 1) % len(palette)]


def segment_colour(number: int) -> tuple[float, float, float]:
    """The RGB colour (each in [0, 1]) the capture draws segment ``number`` (1, 2, ...) in."""
    return _colour(number, _palette())


def _background(source: Dataset | None, rows: int, columns: int) -> tuple[np.ndarray, str]:
    """Display values in [0, 1] of the slice and how they were windowed."""
    if source is None:
        return np.zeros((rows, columns)), "source image not given: segments only"
    values = np.asarray(apply_modality_lut(source.pixel_array, source), dtype=np.float64)
    if str(source.get("SOPClassUID", "")) == CTImageStorage or source.get("Modality") == "CT":
        width, level = CT_WINDOW
        low, high = level - width / 2, level + width / 2
        how = f"window W{width:g} L{level:g}"
    else:
        low, high = (float(v) for v in np.percentile(values, [1, 99]))
        how = "window 1st-99th percentile"
    shown = np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0)
    if source.get("PhotometricInterpretation") == "MONOCHROME1":
        shown = 1.0 - shown
    return shown, how


def _render(
    segments: list[SegmentVolume],
    drawn: _Slice,
    source: Dataset | None,
    orientation: np.ndarray,
    seg: Dataset,
) -> np.ndarray:
    """The picture, (CAPTURE_HEIGHT, CAPTURE_WIDTH, 3) uint8 RGB."""
    palette = _palette()
    rows, columns = int(seg.Rows), int(seg.Columns)
    background, windowing = _background(source, rows, columns)
    figure = Figure(
        figsize=(CAPTURE_WIDTH / CAPTURE_DPI, CAPTURE_HEIGHT / CAPTURE_DPI),
        dpi=CAPTURE_DPI,
        facecolor="black",
    )
    canvas = FigureCanvasAgg(figure)  # no pyplot: no global state, no display
    figure.text(0.01, 0.975, DISCLAIMER, color="white", fontsize=13, va="top", weight="bold")
    where = "" if source is None else f" ({_image_numbers(source)})"
    figure.text(
        0.01,
        0.935,
        f"Slice with the most segmented voxels{where}; {windowing}",
        color="#c8c8c8",
        fontsize=10,
        va="top",
    )
    image_axes = figure.add_axes(_IMAGE_BOX, facecolor="black")
    image_axes.set_axis_off()
    aspect = _pixel_aspect(seg, source)
    image_axes.imshow(
        background, cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="bilinear"
    )
    fill = np.zeros((rows, columns, 4))
    for number, mask in drawn.masks.items():
        fill[mask] = (*_colour(number, palette), FILL_ALPHA)
    image_axes.imshow(fill, aspect=aspect, interpolation="nearest")
    for number, mask in drawn.masks.items():
        image_axes.contour(
            mask.astype(np.uint8), levels=[0.5], colors=[_colour(number, palette)], linewidths=1.2
        )
    _orientation_letters(image_axes, orientation)
    _volume_table(figure.add_axes(_TABLE_BOX), segments, set(drawn.masks), palette)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[:, :, :3].copy()
    if rgb.shape != (CAPTURE_HEIGHT, CAPTURE_WIDTH, 3):
        raise OverlayCaptureError(f"rendered picture has shape {rgb.shape}")  # pragma: no cover
    return rgb


def _image_numbers(source: Dataset) -> str:
    """E.g. "series 3, image 42" from the source's numbers; parts it lacks are left out."""
    parts = [
        f"{name} {source.get(keyword)}"
        for name, keyword in (("series", "SeriesNumber"), ("image", "InstanceNumber"))
        if source.get(keyword) not in (None, "")
    ]
    return ", ".join(parts) or "unnumbered image"


class _TextStyle(TypedDict, total=False):
    """Keyword arguments shared by several ``Axes.text`` calls."""

    color: str
    fontsize: float
    transform: Transform
    va: str


def _orientation_letters(axes: Axes, orientation: np.ndarray) -> None:
    """Patient directions at the four edges of the slice (e.g. R/L, A/P for axial)."""
    row_vector, column_vector = orientation[:3], orientation[3:]
    style: _TextStyle = {"color": "yellow", "fontsize": 12, "transform": axes.transAxes}
    axes.text(0.01, 0.5, _direction_letter(row_vector, sign=-1), ha="left", va="center", **style)
    axes.text(0.99, 0.5, _direction_letter(row_vector), ha="right", va="center", **style)
    axes.text(0.5, 0.99, _direction_letter(column_vector, sign=-1), ha="center", va="top", **style)
    axes.text(0.5, 0.01, _direction_letter(column_vector), ha="center", va="bottom", **style)


def _volume_table(
    axes: Axes,
    segments: list[SegmentVolume],
    visible: set[int],
    palette: list[tuple[float, float, float]],
) -> None:
    """Colour swatch, structure name and volume of every segment, as many as fit."""
    axes.set_axis_off()
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    height_px = _TABLE_BOX[3] * CAPTURE_HEIGHT
    width_px = _TABLE_BOX[2] * CAPTURE_WIDTH
    capacity = int(height_px // _MIN_ROW_PX) - 1  # the header takes one row
    shown, note = segments, ""
    if len(segments) > capacity:
        on_slice = [segment for segment in segments if segment.number in visible]
        shown = on_slice[: capacity - 1]  # the note takes one row
        note = f"+ {len(segments) - len(shown)} more: volumes in the SR report"
    row_px = min(_MAX_ROW_PX, height_px / (len(shown) + 1 + bool(note)))
    font_pt = row_px * 0.6 * 72 / CAPTURE_DPI
    # the name column is ~68% of the table; DejaVu Sans averages ~0.58 em per character
    max_chars = max(8, int(width_px * 0.68 / (font_pt * CAPTURE_DPI / 72 * 0.58)))
    step = row_px / height_px
    text: _TextStyle = {"color": "white", "fontsize": font_pt, "va": "center"}
    axes.text(0.0, 1 - step / 2, "Structure", weight="bold", **text)
    axes.text(1.0, 1 - step / 2, "Volume (mL)", weight="bold", ha="right", **text)
    for row, segment in enumerate(shown, start=1):
        y = 1 - (row + 0.5) * step
        axes.add_patch(
            Rectangle(
                (0.0, y - step * 0.3), 0.05, step * 0.6, color=_colour(segment.number, palette)
            )
        )
        label = segment.label
        if len(label) > max_chars:
            label = label[: max_chars - 1] + "…"
        axes.text(0.08, y, label, **text)
        axes.text(1.0, y, _volume_text(segment.volume_ml), ha="right", **text)
    if note:
        note_style: _TextStyle = {**text, "color": "#c8c8c8"}
        axes.text(0.0, 1 - (len(shown) + 1.5) * step, note, **note_style)


def _volume_text(volume_ml: float) -> str:
    """One decimal; a structure too small to show one is "<0.1", not "0.0"."""
    return "<0.1" if 0 < volume_ml < 0.05 else f"{volume_ml:.1f}"


def _reference(
    sop_class_uid: str, sop_instance_uid: str, frames: list[int] | None = None
) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    if frames:
        item.ReferencedFrameNumber = frames
    return item
