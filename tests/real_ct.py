"""TotalSegmentator's real 20-slice CT series (JPEG 2000 lossless) with its UIDs given back.

The anonymiser that prepared the example blanked StudyInstanceUID, SeriesInstanceUID,
SOPClassUID and SOPInstanceUID in the data sets (the file meta keeps the SOP ones). A SEG must
reference them and a PACS refuses instances without them, so tests copy the series with
consistent UIDs restored, as the modality had them. Pixel data stays as encoded.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

REFERENCE = "totalsegmentator_ref"
EXAMPLE = f"{REFERENCE}/tests/reference_files"
EXAMPLE_CT = f"{EXAMPLE}/example_ct_dicom"


def with_restored_uids(source: Path, target: Path, *, seed: str = "") -> list[Path]:
    """Copy a series whose anonymiser blanked its UIDs, giving it consistent UIDs back.

    The SOP class and instance UIDs come from the file meta; study and series UIDs are new
    (deterministic from ``seed``). Returns the copied files, sorted by name.
    """
    target.mkdir(parents=True)
    study_uid = generate_uid(entropy_srcs=["study", seed])
    series_uid = generate_uid(entropy_srcs=["s", seed])
    paths = []
    for path in sorted(source.iterdir()):
        dataset = pydicom.dcmread(path)
        dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, series_uid
        dataset.save_as(target / path.name, enforce_file_format=True)
        paths.append(target / path.name)
    return paths
