"""The non-identifying facts of a DICOM series that medseg keeps (sidecars, manifests, logs).

An allow-list, never a deny-list: only the attributes named here leave the DICOM file. UIDs
are replaced by ``hash_identifier`` tokens. A SeriesDescription is kept only when it contains
none of the patient's name parts, ID, accession number or birth date, and no date-like
number; otherwise it is dropped and ``series_description_withheld`` is set.
"""

from __future__ import annotations

import re
from typing import Any

from pydicom.dataset import Dataset

from medseg.phi import hash_identifier

KEPT_TEXT = (
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "BodyPartExamined",
    "ConvolutionKernel",
)
KEPT_NUMBERS = (
    "SeriesNumber",
    "KVP",
    "MagneticFieldStrength",
    "RepetitionTime",
    "EchoTime",
    "FlipAngle",
    "BitsStored",
    "PixelRepresentation",
)
HASHED_UIDS = {
    "SeriesInstanceUID": "series_uid_hash",
    "StudyInstanceUID": "study_uid_hash",
    "FrameOfReferenceUID": "frame_of_reference_hash",
}
DATE_LIKE = re.compile(r"(19|20)\d{2}[-./]?\d{2}[-./]?\d{2}")


def series_metadata(dataset: Dataset) -> dict[str, Any]:
    """Allow-listed, non-PHI metadata of the series ``dataset`` belongs to."""
    metadata: dict[str, Any] = {}
    for keyword in KEPT_TEXT:
        value = dataset.get(keyword)
        if value not in (None, ""):
            metadata[_snake(keyword)] = _plain(value)
    for keyword in KEPT_NUMBERS:
        value = dataset.get(keyword)
        if value not in (None, ""):
            try:
                metadata[_snake(keyword)] = float(value)
            except (TypeError, ValueError):
                continue
    image_type = dataset.get("ImageType")
    if image_type:
        metadata["image_type"] = [str(v) for v in image_type]
    for keyword, field_name in HASHED_UIDS.items():
        value = dataset.get(keyword)
        if value:
            metadata[field_name] = hash_identifier(str(value))
    transfer_syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if transfer_syntax is not None:
        metadata["transfer_syntax"] = transfer_syntax.name
    description = str(dataset.get("SeriesDescription", "") or "")
    if description:
        if is_identifying(description, dataset):
            metadata["series_description_withheld"] = True
        else:
            metadata["series_description"] = description
    return metadata


def is_identifying(text: str, dataset: Dataset) -> bool:
    """True when ``text`` contains a patient identifier from ``dataset`` or a date."""
    lowered = text.lower()
    if DATE_LIKE.search(text):
        return True
    return any(token in lowered for token in identifying_tokens(dataset))


def identifying_tokens(dataset: Dataset) -> set[str]:
    """Lower-case strings that identify the patient in ``dataset`` (name parts, IDs, dates)."""
    tokens: set[str] = set()
    name = str(dataset.get("PatientName", "") or "")
    tokens.update(part for part in re.split(r"[\^\s,]+", name.lower()) if len(part) >= 2)
    for keyword in ("PatientID", "AccessionNumber", "PatientBirthDate", "OtherPatientIDs"):
        value = str(dataset.get(keyword, "") or "").strip().lower()
        if len(value) >= 3:
            tokens.add(value)
    return tokens


def _snake(keyword: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", keyword).lower()


def _plain(value: Any) -> Any:
    if isinstance(value, str | int | float):
        return value
    return str(value)
