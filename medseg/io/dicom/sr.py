"""Organ volumes -> DICOM Structured Report (TID 1500 Measurement Report) about a medseg SEG.

The report is a Comprehensive 3D SR built with highdicom: one TID 1411 "Volumetric ROI
Measurements" group per segment of the SEG, each holding one Volume measurement (SCT 118565006,
UCUM ``ml``) and a Referenced Segment item that points at the SEG instance, the segment number
and the source images of that segment's frames. A PACS files the SR with the SEG in the
segmented study; a viewer that reads TID 1500 (OHIF, 3D Slicer, ...) lists the volumes per
structure and can jump from a measurement to its segment.

Decisions:

* The SEG is the only input besides the volumes: patient and study modules are copied from it
  (it copied them from the source images), its segment labels name the structures and its
  frames name the source images. ``volumes_ml`` must name exactly the SEG's segments; a segment
  without a volume or a volume without a segment raises ``VolumeReportError`` rather than
  writing a report that silently omits a structure or measures nothing.
* Evidence: DICOM requires every instance the content references to be listed in the evidence
  sequences. The content references the SEG and, per segment, the source images of its frames,
  so the evidence is the SEG plus the source instances named in its ReferencedSeriesSequence
  (SOP class and UIDs only; the source files are not needed).
* Finding category, finding type and finding site are copied from each segment's description
  (SegmentedPropertyCategory, SegmentedPropertyType, AnatomicRegion). medseg's SEG has no
  per-structure code list and codes both as the generic "Anatomical Structure", without an
  anatomic region, so the structure is named by the tracking identifier (= segment label). If
  the SEG ever carries specific codes, the report follows without change here.
* Identity is deterministic: series, instance and tracking UIDs are ``generate_uid`` digests of
  the SEG's SOPInstanceUID and ``"sr"``, and every timestamp highdicom would take from the
  clock (content, instance creation, contribution) is the SEG's content date and time. Writing
  the report of the same SEG twice gives the same bytes, so re-sending is idempotent: a PACS
  files it once. A report with different volumes for the same SEG would clash with the first
  one; volumes are a function of the SEG, so that only happens after a bug fix, which should
  come with a new SEG.
* The report is marked COMPLETE (every segment is measured), PRELIMINARY and UNVERIFIED: it is
  automatic and nobody has reviewed it.
* Series number: the SEG's + ``SR_SERIES_NUMBER_OFFSET`` (the overlay capture takes + 2), so
  the results list next to the SEG.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.uid import UID, SegmentationStorage, generate_uid
from pydicom.valuerep import DA, TM

from medseg.errors import DicomFileError, SegmentationLabelError, VolumeReportError
from medseg.io.atomic import atomic_path
from medseg.io.dicom.seg import MANUFACTURER, _check_text, _highdicom_quiet, derived_series_number

logger = logging.getLogger(__name__)

SR_SERIES_NUMBER_OFFSET = 1  # SR series number = SEG series number + this
SERIES_DESCRIPTION = "medseg organ volumes"
SUPPORTED_SEGMENTATION_TYPES = frozenset({"BINARY", "FRACTIONAL"})
MILLILITER = hd.sr.CodedConcept(value="ml", scheme_designator="UCUM", meaning="milliliter")


@dataclass(frozen=True)
class SegmentVolume:
    """One segment of a SEG and its volume."""

    number: int
    label: str
    volume_ml: float
    description: Dataset  # the segment's item of SegmentSequence


def write_volume_report(
    seg_path: Path,
    volumes_ml: Mapping[str, float],
    *,
    out_path: Path,
    algorithm_name: str,
    algorithm_version: str,
    model_reference: str | None = None,
) -> Path:
    """Write a TID 1500 Comprehensive 3D SR of organ volumes that references the SEG.

    The SR joins the SEG's study, with the SEG's patient and study modules (as identifying as
    the SEG itself; nothing of them is logged), in its own series "medseg organ volumes".

    Args:
        seg_path: a DICOM Segmentation (BINARY or FRACTIONAL), e.g. from ``write_dicom_seg``.
        volumes_ml: volume in millilitres per structure, keyed by segment label; exactly one
            entry per segment of the SEG.
        out_path: the SR file to write (atomically; parent folders are created).
        algorithm_name: algorithm that produced the segmentation (algorithm identification,
            observer device, ManufacturerModelName).
        algorithm_version: its version.
        model_reference: optional model identifier (e.g. an MLflow model URI), recorded as an
            algorithm parameter.

    Returns:
        ``out_path``.

    Raises:
        DicomFileError: ``seg_path`` cannot be read as DICOM.
        VolumeReportError: the file is not a BINARY/FRACTIONAL SEG, ``volumes_ml`` does not
            name exactly its segments, a volume is negative or not finite, or an algorithm
            field is empty or too long.

    Example:
        >>> write_volume_report(
        ...     Path("out/seg.dcm"), {"liver": 1510.2, "spleen": 182.4},
        ...     out_path=Path("out/sr.dcm"), algorithm_name="medseg-unet",
        ...     algorithm_version="1.2.0")
    """
    for field, value in (
        ("algorithm_name", algorithm_name),
        ("algorithm_version", algorithm_version),
    ):
        _check_field(field, value)
    if model_reference is not None and not model_reference.strip():
        raise VolumeReportError("model_reference must not be blank (pass None to omit it)")
    seg = read_segmentation(seg_path)
    segments = match_volumes(seg, volumes_ml)
    algorithm = hd.sr.AlgorithmIdentification(
        name=algorithm_name,
        version=algorithm_version,
        parameters=None if model_reference is None else [f"model: {model_reference}"],
        family=codes.DCM.ArtificialIntelligence,
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["medseg device", algorithm_name, algorithm_version]),
            name=algorithm_name,
            manufacturer_name=MANUFACTURER,
            model_name=algorithm_name,
        ),
    )
    timestamp = content_timestamp(seg)
    with _highdicom_quiet():
        groups = [_measurement_group(seg, segment, algorithm) for segment in segments]
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=codes.SCT.ImagingProcedure,
            imaging_measurements=groups,
        )
        try:
            sr = hd.sr.Comprehensive3DSR(
                evidence=[seg, *_referenced_sources(seg)],
                content=report[0],
                series_instance_uid=derived_uid(seg, "sr", "series"),
                series_number=derived_series_number(seg, SR_SERIES_NUMBER_OFFSET),
                sop_instance_uid=derived_uid(seg, "sr", "instance"),
                instance_number=1,
                manufacturer=MANUFACTURER,
                is_complete=True,
                series_description=SERIES_DESCRIPTION,
                manufacturer_model_name=algorithm_name,
                software_versions=algorithm_version,
                **content_time_arguments(timestamp),
            )
        except ValueError as exc:
            if "No evidence" not in str(exc):
                raise
            raise VolumeReportError(
                f"{seg_path}: the SEG's frames reference source images its "
                "ReferencedSeriesSequence does not list"
            ) from exc
    fix_provenance(sr, seg)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        sr.save_as(tmp, enforce_file_format=True)
    logger.info("wrote DICOM SR with %d volume(s) to %s", len(segments), out_path)
    return out_path


def read_segmentation(seg_path: Path) -> Dataset:
    """The SEG's header (no pixel data), checked to be a BINARY or FRACTIONAL SEG.

    Raises:
        DicomFileError: unreadable file.
        VolumeReportError: not a Segmentation, or of an unsupported type (LABELMAP).
    """
    try:
        seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DicomFileError(seg_path, f"unreadable DICOM file: {exc}") from exc
    if str(seg.get("SOPClassUID", "")) != SegmentationStorage:
        raise VolumeReportError(f"{seg_path}: not a DICOM Segmentation (SEG) instance")
    kind = str(seg.get("SegmentationType", ""))
    if kind not in SUPPORTED_SEGMENTATION_TYPES:
        raise VolumeReportError(
            f"{seg_path}: SegmentationType {kind!r} is not supported (only BINARY and "
            "FRACTIONAL, as medseg writes)"
        )
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SegmentSequence"):
        if not seg.get(keyword):
            raise VolumeReportError(f"{seg_path}: the SEG lacks {keyword}")
    return seg


def match_volumes(seg: Dataset, volumes_ml: Mapping[str, float]) -> list[SegmentVolume]:
    """Pair every segment of ``seg`` with its volume (by segment label), in segment order.

    Raises:
        VolumeReportError: duplicate segment labels, a segment without a volume, a volume
            naming no segment, or a volume that is not a finite number >= 0.
    """
    descriptions = sorted(seg.SegmentSequence, key=lambda item: int(item.SegmentNumber))
    labels = [str(item.get("SegmentLabel", "")) for item in descriptions]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise VolumeReportError(
            f"segment label(s) {duplicates} occur more than once in the SEG: volumes keyed "
            "by label would be ambiguous"
        )
    missing = [label for label in labels if label not in volumes_ml]
    unknown = sorted(str(name) for name in volumes_ml if name not in labels)
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"no volume for segment(s) {missing}")
        if unknown:
            problems.append(f"volume(s) for {unknown}, which name no segment")
        raise VolumeReportError(
            f"volumes_ml must name exactly the SEG's segments: {'; '.join(problems)} "
            f"(the SEG's segments are {labels})"
        )
    segments = []
    for item, label in zip(descriptions, labels, strict=True):
        value = volumes_ml[label]
        is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        volume = float(value) if is_number else math.nan  # numpy scalars are Real too
        if not math.isfinite(volume) or volume < 0:
            raise VolumeReportError(
                f"volume of {label!r} must be a finite number >= 0 mL, got {value!r}"
            )
        segments.append(SegmentVolume(int(item.SegmentNumber), label, volume, item))
    return segments


def derived_uid(seg: Dataset, product: str, part: str) -> UID:
    """A UID that depends only on the SEG's SOPInstanceUID, the product and the part."""
    return generate_uid(entropy_srcs=[str(seg.SOPInstanceUID), product, part])


def content_timestamp(seg: Dataset) -> tuple[str, str] | None:
    """The SEG's (ContentDate, ContentTime), or None when either is missing or malformed."""
    date, time = str(seg.get("ContentDate") or ""), str(seg.get("ContentTime") or "")
    try:
        if not date or not time or DA(date) is None or TM(time) is None:
            return None
    except ValueError:
        return None
    return date, time


class ContentTimeArguments(TypedDict, total=False):
    """The keyword arguments ``content_time_arguments`` passes to a highdicom constructor."""

    content_date: str
    content_time: str


def content_time_arguments(timestamp: tuple[str, str] | None) -> ContentTimeArguments:
    """``content_date`` and ``content_time`` for a highdicom constructor (none: the clock)."""
    return {} if timestamp is None else {"content_date": timestamp[0], "content_time": timestamp[1]}


def fix_provenance(dataset: Dataset, seg: Dataset) -> None:
    """Make ``dataset``'s provenance deterministic and true to the SEG it is derived from.

    * Instance creation and highdicom's contribution times become the SEG's content time
      (``content_timestamp``; without one the clock times stay). Content date and time are
      passed to the constructor (``content_time_arguments``).
    * highdicom lists the reference dataset's equipment as "acquisition equipment"; for a
      derived object that dataset is the SEG, whose equipment is medseg, not a scanner. That
      item is replaced by the acquisition equipment the SEG records (the scanner).
    """
    timestamp = content_timestamp(seg)
    if timestamp is not None:
        date, time = timestamp
        dataset.InstanceCreationDate, dataset.InstanceCreationTime = date, time
    acquisition = [
        item for item in seg.get("ContributingEquipmentSequence") or () if _acquired(item)
    ]
    equipment = [*acquisition]
    for item in dataset.get("ContributingEquipmentSequence") or ():
        if _acquired(item):
            continue
        if timestamp is not None and item.get("ManufacturerModelName") == "highdicom":
            item.ContributionDateTime = "".join(timestamp)
        equipment.append(item)
    dataset.ContributingEquipmentSequence = equipment


def _acquired(equipment: Dataset) -> bool:
    """Whether a ContributingEquipmentSequence item is "Acquisition Equipment" (DCM 109101)."""
    purpose = equipment.get("PurposeOfReferenceCodeSequence") or ()
    return any(code.get("CodeValue") == "109101" for code in purpose)


def _check_field(field: str, value: str) -> None:
    try:
        _check_text(field, value)
    except SegmentationLabelError as exc:
        raise VolumeReportError(str(exc)) from None


def _measurement_group(
    seg: Dataset, segment: SegmentVolume, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411 group: the segment, its codes and its volume."""
    description = segment.description
    category = _first_code(description, "SegmentedPropertyCategoryCodeSequence")
    finding = _first_code(description, "SegmentedPropertyTypeCodeSequence")
    region = _first_code(description, "AnatomicRegionSequence")
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(seg, "sr", f"tracking {segment.number}"),
            identifier=segment.label,
        ),
        referenced_segment=_referenced_segment(seg, segment.number),
        finding_category=category,
        finding_type=finding,
        finding_sites=None if region is None else [hd.sr.FindingSite(region)],
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(name=codes.SCT.Volume, value=segment.volume_ml, unit=MILLILITER)
        ],
    )


def _referenced_segment(seg: Dataset, number: int) -> hd.sr.ReferencedSegment:
    """The segment with the source images of its frames; the source series if it has none."""
    has_frames = any(
        int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) == number
        for item in seg.get("PerFrameFunctionalGroupsSequence") or ()
        if item.get("SegmentIdentificationSequence")
    )
    if has_frames:
        return hd.sr.ReferencedSegment.from_segmentation(seg, number)
    series = seg.get("ReferencedSeriesSequence") or ()
    if not series:
        raise VolumeReportError(
            f"segment {number} has no frames and the SEG names no source series to reference"
        )
    return hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=number,
        source_series=hd.sr.SourceSeriesForSegmentation(series[0].SeriesInstanceUID),
    )


def _first_code(item: Dataset, keyword: str) -> hd.sr.CodedConcept | None:
    sequence = item.get(keyword) or ()
    return hd.sr.CodedConcept.from_dataset(sequence[0]) if sequence else None


def _referenced_sources(seg: Dataset) -> list[Dataset]:
    """Stand-ins (SOP class and UIDs) for the source instances the SEG references."""
    stubs = []
    for series in seg.get("ReferencedSeriesSequence") or ():
        for instance in series.get("ReferencedInstanceSequence") or ():
            stub = Dataset()
            stub.StudyInstanceUID = seg.StudyInstanceUID
            stub.SeriesInstanceUID = series.SeriesInstanceUID
            stub.SOPClassUID = instance.ReferencedSOPClassUID
            stub.SOPInstanceUID = instance.ReferencedSOPInstanceUID
            stubs.append(stub)
    return stubs
