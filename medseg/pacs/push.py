"""Push: send each finished case's results back to the PACS, once per series and model.

For every case of a batch OUT folder that has a DICOM SEG (DICOM inputs), the objects the PACS
file asks for are sent: the SEG, a DICOM SR of the organ volumes (``medseg.io.dicom.sr``), a
secondary capture with the overlay and the volume table (``medseg.io.dicom.sc``) and the RT
Structure Set that ``batch --rtstruct`` wrote (a case without one is a failed delivery, not
skipped); SR and SC are written into the case folder first. Idempotence, at two levels:

* the delivery record (``medseg.pacs.state``): a series delivered with a model is skipped;
* per object, the PACS is asked whether it holds the SOP instance already (SR and SC UIDs are
  derived from the SEG's, so a rebuilt report is the same instance): a delivery interrupted
  after the SEG sends only what is missing.

Every request is retried with backoff (``medseg.pacs.retry``). A case whose objects cannot be
sent gets a failed delivery record with the reason and keeps its results, so the next push
sends it. Once the PACS is unreachable after all retries, the remaining cases are recorded as
failed without trying each one for minutes.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from medseg import __version__
from medseg.batch.layout import read_results
from medseg.batch.records import ScanResult
from medseg.errors import InputFileError, MedsegError, PacsError, PacsUnavailableError
from medseg.infer.outputs import RTSTRUCT_SUFFIX
from medseg.pacs.client import PacsClient, SeriesInfo
from medseg.pacs.config import PacsConfig, ResultKind
from medseg.pacs.pull import is_pulled, pulled_series_folder
from medseg.pacs.retry import with_retry
from medseg.pacs.state import (
    INCOMING_FOLDER,
    Delivery,
    DeliveryLedger,
    delivery_key,
    state_folder,
)

logger = logging.getLogger(__name__)

ALGORITHM_NAME = "medseg"


@dataclass(frozen=True)
class PushFailure:
    """A case whose results did not reach the PACS (they stay in OUT)."""

    case_id: str
    reason: str


@dataclass
class PushReport:
    """What one push did."""

    sent: list[str] = field(default_factory=list)  # case ids delivered now
    already_sent: list[str] = field(default_factory=list)  # delivered before, same model
    without_seg: list[str] = field(default_factory=list)  # not DICOM inputs: nothing to send
    failed: list[PushFailure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """1 when any case could not be delivered."""
        return 1 if self.failed else 0


@dataclass(frozen=True)
class SegHeader:
    """What push reads from a case's SEG."""

    path: Path
    study_uid: str
    source_series_uid: str
    segment_labels: tuple[str, ...]


def read_seg_header(path: Path) -> SegHeader:
    """The study, referenced source series and segment labels of a SEG file."""
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    return SegHeader(
        path=path,
        study_uid=str(dataset.StudyInstanceUID),
        source_series_uid=str(dataset.ReferencedSeriesSequence[0].SeriesInstanceUID),
        segment_labels=tuple(str(item.SegmentLabel) for item in dataset.SegmentSequence),
    )


def push(
    client: PacsClient,
    config: PacsConfig,
    out_dir: Path,
    *,
    incoming: Path | None = None,
    owns: Callable[[str], bool] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> PushReport:
    """Deliver the results of every finished case in ``out_dir`` (see the module doc).

    ``incoming`` is where the source series were pulled (for the overlay picture; default
    ``OUT/.pacs/incoming``); a series not found there is retrieved from the PACS when a
    secondary capture is asked for.
    ``owns(series_uid)``: whether this shard of a job array delivers the series.
    """
    started = time.perf_counter()
    ledger = DeliveryLedger(out_dir)
    if incoming is None:
        incoming = state_folder(out_dir) / INCOMING_FOLDER
    report = PushReport()
    unreachable: str | None = None
    for result in read_results(out_dir):
        seg_path = _seg_output(out_dir, result)
        if seg_path is None:
            report.without_seg.append(result.case_id)
            continue
        try:
            seg = read_seg_header(seg_path)
        except (OSError, ValueError, AttributeError, IndexError) as error:
            report.failed.append(PushFailure(result.case_id, f"{seg_path.name}: {error}"))
            continue
        if owns is not None and not owns(seg.source_series_uid):
            continue
        key = delivery_key(seg.source_series_uid, result.model, config.connection.name)
        previous = ledger.get(key)
        if previous is not None and previous.status == "sent":
            report.already_sent.append(result.case_id)
            continue
        delivery = Delivery(
            case_id=result.case_id,
            model=result.model,
            destination=config.connection.name,
            status="failed",
            attempts=(previous.attempts if previous else 0) + 1,
        )
        if unreachable is not None:
            delivery.error = f"not attempted: {unreachable}"
        else:
            try:
                delivery.objects = _deliver(client, config, result, seg, incoming, sleep)
                delivery.status = "sent"
            except PacsUnavailableError as error:
                unreachable = str(error)
                delivery.error = str(error)
            except (PacsError, MedsegError, OSError) as error:
                delivery.error = str(error)
        ledger.record(key, delivery)
        if delivery.status == "sent":
            report.sent.append(result.case_id)
        else:
            logger.error("case %s not delivered: %s", result.case_id, delivery.error)
            report.failed.append(PushFailure(result.case_id, delivery.error or "unknown"))
    if ledger.folder.exists():
        ledger.write_listing()
    report.seconds = time.perf_counter() - started
    return report


def _seg_output(out_dir: Path, result: ScanResult) -> Path | None:
    for name in result.outputs:
        if name.endswith("_seg.dcm") and (path := Path(out_dir) / result.case_id / name).is_file():
            return path
    return None


def _rtstruct_output(case_folder: Path, result: ScanResult) -> Path:
    """The case's ``_rtstruct.dcm``.

    Raises:
        InputFileError: the case has none (it was segmented without ``--rtstruct``).
    """
    for name in result.outputs:
        if name.endswith(RTSTRUCT_SUFFIX) and (path := case_folder / name).is_file():
            return path
    raise InputFileError(
        case_folder,
        "the PACS file's results ask for an rtstruct but the case has no "
        f"{result.case_id}{RTSTRUCT_SUFFIX}: segment it again with --rtstruct --force",
    )


def _deliver(
    client: PacsClient,
    config: PacsConfig,
    result: ScanResult,
    seg: SegHeader,
    incoming: Path | None,
    sleep: Callable[[float], None],
) -> dict[str, str]:
    """Write the report objects and send every object the PACS lacks; kind -> outcome."""
    objects = {ResultKind.SEG: seg.path} if ResultKind.SEG in config.results else {}
    if ResultKind.RTSTRUCT in config.results:
        objects[ResultKind.RTSTRUCT] = _rtstruct_output(seg.path.parent, result)
    missing = [name for name in seg.segment_labels if name not in result.volumes_ml]
    if missing:
        raise InputFileError(
            seg.path,
            f"segments {missing} have no volume in the case's result.json "
            f"(it has {sorted(result.volumes_ml)}); was the SEG replaced by hand?",
        )
    volumes = {name: result.volumes_ml[name] for name in seg.segment_labels}
    case_folder = seg.path.parent
    if ResultKind.SR in config.results:
        from medseg.io.dicom.sr import write_volume_report

        objects[ResultKind.SR] = write_volume_report(
            seg.path,
            volumes,
            out_path=case_folder / f"{result.case_id}_sr.dcm",
            algorithm_name=ALGORITHM_NAME,
            algorithm_version=__version__,
            model_reference=result.model,
        )
    if ResultKind.SC in config.results:
        from medseg.io.dicom.sc import write_overlay_capture

        with _source_files(client, config, seg, incoming, sleep) as source_files:
            objects[ResultKind.SC] = write_overlay_capture(
                seg.path,
                source_files,
                volumes,
                out_path=case_folder / f"{result.case_id}_sc.dcm",
            )
    outcomes = {}
    for kind, path in objects.items():
        outcomes[kind.value] = _send_once(client, config, path, sleep)
    return outcomes


def _send_once(
    client: PacsClient, config: PacsConfig, path: Path, sleep: Callable[[float], None]
) -> str:
    header = pydicom.dcmread(path, stop_before_pixels=True)
    uids = (str(header.StudyInstanceUID), str(header.SeriesInstanceUID))
    sop_uid = str(header.SOPInstanceUID)

    def send() -> str:
        if client.has_instance(*uids, sop_uid):
            return "already in PACS"
        client.store([path])
        return "sent"

    return with_retry(send, config.retry, what=f"{client.name}: store {path.name}", sleep=sleep)


@contextlib.contextmanager
def _source_files(
    client: PacsClient,
    config: PacsConfig,
    seg: SegHeader,
    incoming: Path | None,
    sleep: Callable[[float], None],
) -> Iterator[list[Path]]:
    """The source series' files: pulled ones, else retrieved into a temporary folder."""
    if incoming is not None and is_pulled(incoming, seg.source_series_uid):
        yield sorted(pulled_series_folder(incoming, seg.source_series_uid).glob("*.dcm"))
        return
    scratch = state_folder(seg.path.parent.parent)
    scratch.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="sources-", dir=scratch))
    try:
        series = SeriesInfo(study_uid=seg.study_uid, series_uid=seg.source_series_uid)
        files = with_retry(
            lambda: client.retrieve_series(series, folder),
            config.retry,
            what=f"{client.name}: retrieve the source series",
            sleep=sleep,
        )
        yield files
    finally:
        shutil.rmtree(folder, ignore_errors=True)
