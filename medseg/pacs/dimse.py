"""``PacsClient`` over DIMSE: C-ECHO, C-FIND, C-GET and C-STORE with pynetdicom.

Each call opens its own association and releases it at the end (aborts it after an error):
the presentation contexts differ per operation, and no idle association is left for the PACS
to time out. Retrieval is C-GET, so the PACS sends the instances back on the same association
and medseg needs no inbound port or AE title registered for C-MOVE; the storage contexts are
proposed with SCP role selection, one context per SOP class and transfer syntax so the PACS
can send each instance as stored (lossless data stays bit for bit; many PACS, Orthanc's Debian
build among them, cannot transcode JPEG 2000). An instance the PACS cannot send in any
proposed context (another SOP class, a transfer syntax it cannot convert) fails its
sub-operation; Orthanc then ends the whole C-GET with 0xC000, which becomes
``PacsRefusedError``: retrying cannot help.

Errors: no association (connection refused, timeout, rejection) or an out-of-resources
status -> ``PacsUnavailableError``; any other failure status -> ``PacsRefusedError``. Messages
name the PACS, the operation, the status code and our own file names, never patient data.
pynetdicom logs identifiers (patient name, ID...) at debug level: its logger is set to WARNING
unless the application chose a level for it, and identifier logging is switched off.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, _config, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import time
    BasicTextSRStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    EnhancedPETImageStorage,
    EnhancedSRStorage,
    LegacyConvertedEnhancedCTImageStorage,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)
from pynetdicom.status import code_to_category

from medseg.errors import DicomFileError, PacsRefusedError, PacsUnavailableError
from medseg.io.atomic import atomic_path
from medseg.pacs.client import SeriesInfo, SeriesQuery, instance_file_name
from medseg.pacs.config import DimseSettings
from medseg.pacs.dicomweb import series_info

_pynetdicom_logger = logging.getLogger("pynetdicom")
if _pynetdicom_logger.level == logging.NOTSET:
    _pynetdicom_logger.setLevel(logging.WARNING)
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

MAX_CONTEXTS = 128  # presentation contexts one association can propose (PS3.8: odd IDs 1-255)
UNCOMPRESSED = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
PIXEL_SYNTAXES = (
    *UNCOMPRESSED,
    JPEG2000Lossless,
    JPEG2000,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
)
PIXEL_CLASSES = (
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    MRImageStorage,
    EnhancedMRImageStorage,
    PositronEmissionTomographyImageStorage,
    EnhancedPETImageStorage,
    SegmentationStorage,
    SecondaryCaptureImageStorage,  # medseg's own result pictures, and scanners' dose screens
)
SR_CLASSES = (
    BasicTextSRStorage,
    EnhancedSRStorage,
    ComprehensiveSRStorage,
    Comprehensive3DSRStorage,
)
SERIES_KEYS = (
    "SeriesInstanceUID",
    "BodyPartExamined",
    "SeriesDescription",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
)
PENDING = (0xFF00, 0xFF01)


def _retrieve_contexts() -> list[PresentationContext]:
    """C-GET plus one storage context per (SOP class, transfer syntax) we accept."""
    contexts = [build_context(StudyRootQueryRetrieveInformationModelGet)]
    for sop_classes, syntaxes in ((PIXEL_CLASSES, PIXEL_SYNTAXES), (SR_CLASSES, UNCOMPRESSED)):
        contexts += [build_context(c, s) for c in sop_classes for s in syntaxes]
    assert len(contexts) <= MAX_CONTEXTS
    return contexts


class DimseClient:
    """A DIMSE PACS (see module docstring)."""

    def __init__(self, settings: DimseSettings, name: str) -> None:
        self.name = name
        self._settings = settings
        self._ae = AE(ae_title=settings.calling_ae)
        timeout = settings.timeout_seconds
        self._ae.connection_timeout = timeout
        self._ae.acse_timeout = timeout
        self._ae.dimse_timeout = timeout
        self._ae.network_timeout = timeout

    def echo(self) -> None:
        """C-ECHO: proves host, port, AE titles and that the PACS answers."""
        with self._association("echo", [build_context(Verification)]) as association:
            status = association.send_c_echo()
        self._check_final(status, "echo")

    def find_series(self, query: SeriesQuery) -> list[SeriesInfo]:
        """C-FIND (study root, SERIES level), one query per modality."""
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = query.study_uid or ""
        identifier.StudyDate = _date_range(query)
        for keyword in SERIES_KEYS:
            setattr(identifier, keyword, "")
        found: dict[str, SeriesInfo] = {}
        contexts = [build_context(StudyRootQueryRetrieveInformationModelFind)]
        with self._association("series search", contexts) as association:
            for modality in query.modalities or ("",):
                identifier.Modality = modality
                for answer in self._find(association, identifier, "series search"):
                    series = series_info(answer)
                    found[series.series_uid] = series
        return list(found.values())

    def retrieve_series(self, series: SeriesInfo, folder: Path) -> list[Path]:
        """C-GET the series; each instance is written atomically as it arrives, as sent.

        Raises:
            OSError: a received instance could not be written (e.g. the disk is full).
        """
        folder.mkdir(parents=True, exist_ok=True)
        files: dict[Path, None] = {}
        write_errors: list[OSError] = []

        def received(event: Any) -> int:
            path = folder / instance_file_name(str(event.request.AffectedSOPInstanceUID))
            try:
                with atomic_path(path) as tmp:
                    tmp.write_bytes(event.encoded_dataset())
            except OSError as error:
                write_errors.append(error)
                return 0xA700  # Refused: out of resources
            files[path] = None
            return 0x0000

        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = series.study_uid
        identifier.SeriesInstanceUID = series.series_uid
        roles = [build_role(c, scp_role=True) for c in (*PIXEL_CLASSES, *SR_CLASSES)]
        final = Dataset()
        with self._association(
            "retrieve", _retrieve_contexts(), roles, [(evt.EVT_C_STORE, received)]
        ) as association:
            model = StudyRootQueryRetrieveInformationModelGet
            for status, _ in association.send_c_get(identifier, model):
                final = status
                if not status or status.Status not in PENDING:
                    break
        if write_errors:
            raise write_errors[0]
        self._check_final(final, "retrieve", final)
        return list(files)

    def store(self, files: Sequence[Path]) -> None:
        """C-STORE each file as it is encoded (its own SOP class and transfer syntax).

        Every file is tried; then PacsRefusedError names each refused file and its status.

        Raises:
            PacsRefusedError: the PACS refused some files (each named with its status).
            PacsUnavailableError: the association was lost during the transfer.
        """
        kinds = {Path(path): _file_kind(Path(path)) for path in files}
        refused: list[str] = []
        for batch in _batches(kinds):
            contexts = [build_context(*kind) for kind in dict.fromkeys(batch.values())]
            with self._association("store", contexts) as association:
                accepted = {
                    (str(c.abstract_syntax), str(c.transfer_syntax[0]))
                    for c in association.accepted_contexts
                }
                for path, kind in batch.items():
                    if kind not in accepted:
                        refused.append(f"{path.name} (SOP class {kind[0]} in {kind[1]} refused)")
                        continue
                    status = association.send_c_store(pydicom.dcmread(path))
                    if not status:
                        raise PacsUnavailableError(
                            f"{self.name}: DIMSE store: no answer for {path.name} "
                            "(association aborted or timed out)"
                        )
                    if code_to_category(status.Status) not in ("Success", "Warning"):
                        refused.append(f"{path.name} (status 0x{status.Status:04X})")
        if refused:
            raise PacsRefusedError(f"{self.name}: DIMSE store refused {', '.join(refused)}")

    def has_instance(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> bool:
        """C-FIND at IMAGE level on the SOP instance UID."""
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.StudyInstanceUID = study_uid
        identifier.SeriesInstanceUID = series_uid
        identifier.SOPInstanceUID = sop_instance_uid
        contexts = [build_context(StudyRootQueryRetrieveInformationModelFind)]
        with self._association("instance search", contexts) as association:
            found = list(self._find(association, identifier, "instance search"))
        return bool(found)

    def close(self) -> None:
        """End any association still open (normally none: each call releases its own)."""
        self._ae.shutdown()

    @contextlib.contextmanager
    def _association(
        self,
        what: str,
        contexts: list[PresentationContext],
        roles: list[Any] | None = None,
        handlers: list[EventHandlerType] | None = None,
    ) -> Iterator[Association]:
        """An established association; released after success, aborted after an error."""
        settings = self._settings
        where = f"{settings.host}:{settings.port} (AE {settings.called_ae})"
        try:
            association = self._ae.associate(
                settings.host,
                settings.port,
                contexts=contexts,
                ae_title=settings.called_ae,
                ext_neg=roles,
                evt_handlers=handlers,
            )
        except OSError as error:
            raise PacsUnavailableError(
                f"{self.name}: DIMSE {what}: cannot reach {where}: {error}"
            ) from error
        if not association.is_established:
            problem = (
                "rejected the association"
                if association.is_rejected
                else "no association (connection refused, timed out or aborted)"
            )
            raise PacsUnavailableError(f"{self.name}: DIMSE {what}: {where}: {problem}")
        try:
            yield association
        except BaseException:
            association.abort()
            raise
        association.release()

    def _find(self, association: Association, identifier: Dataset, what: str) -> Iterator[Dataset]:
        """The identifiers a C-FIND answers; raises on a failure status or a lost peer."""
        model = StudyRootQueryRetrieveInformationModelFind
        for status, answer in association.send_c_find(identifier, model):
            if status and status.Status in PENDING:
                if answer is not None:
                    yield answer
                continue
            self._check_final(status, what)
            return

    def _check_final(self, status: Dataset, what: str, counts: Dataset | None = None) -> None:
        """Raise unless ``status`` is Success; C-GET failures give the sub-operation counts."""
        if not status or "Status" not in status:
            raise PacsUnavailableError(
                f"{self.name}: DIMSE {what}: no answer (association aborted or timed out)"
            )
        code = int(status.Status)
        if code == 0x0000:
            return
        problem = f"{self.name}: DIMSE {what}: status 0x{code:04X}"
        if counts is not None and "NumberOfFailedSuboperations" in counts:
            problem += (
                f" ({counts.get('NumberOfCompletedSuboperations', '?')} instances received, "
                f"{counts.NumberOfFailedSuboperations} failed)"
            )
        if 0xA700 <= code <= 0xA7FF or code_to_category(code) == "Cancel":
            raise PacsUnavailableError(f"{problem}, PACS out of resources or cancelled")
        raise PacsRefusedError(problem)


def _date_range(query: SeriesQuery) -> str:
    """DICOM date range ``YYYYMMDD-YYYYMMDD`` (open ends allowed), or "" for any date."""
    start, end = query.study_date_from, query.study_date_to
    if start is None and end is None:
        return ""
    as_text = lambda day: day.strftime("%Y%m%d") if day else ""  # noqa: E731
    return f"{as_text(start)}-{as_text(end)}"


def _file_kind(path: Path) -> tuple[str, str]:
    """(SOP class UID, transfer syntax UID) from the file meta of ``path``."""
    try:
        meta = read_file_meta_info(path)
        return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
    except (OSError, InvalidDicomError, AttributeError) as error:
        raise DicomFileError(path, f"cannot be sent: no DICOM file meta ({error})") from error


def _batches(kinds: dict[Path, tuple[str, str]]) -> Iterator[dict[Path, tuple[str, str]]]:
    """The files split so no batch needs more than MAX_CONTEXTS presentation contexts."""
    batch: dict[Path, tuple[str, str]] = {}
    for path, kind in kinds.items():
        if kind not in batch.values() and len(set(batch.values())) == MAX_CONTEXTS:
            yield batch
            batch = {}
        batch[path] = kind
    if batch:
        yield batch
