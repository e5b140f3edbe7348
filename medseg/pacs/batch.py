"""``medseg batch --from-pacs A.yaml --to-pacs B.yaml``: pull, segment, push, in one run.

1. The model URI is pinned (an alias resolved to its version) so that "already delivered"
   means: this series, this model version.
2. Pull (``medseg.pacs.pull``) into ``OUT/.pacs/incoming``; series delivered with this model
   before are not retrieved again.
3. ``medseg.batch.runner.run_batch`` over the incoming folder (complete cases are skipped);
   with ``--rtstruct`` when the push's PACS file asks for the RT Structure Set.
4. Push (``medseg.pacs.push``) every finished case not yet delivered with this model.
5. Pulled images of delivered series are deleted unless ``keep_pulled``: patient images do
   not pile up on the batch node. Their results stay in OUT.

Shards of a job array (``--shard``) each pull, segment and push the series they own (the
batch's own assignment), so they share one OUT without doing anything twice.

Without ``--from-pacs`` the scans come from SCANS_ROOT; without ``--to-pacs`` nothing is sent.
A failing pull of one series, a failing scan or a failing delivery never stops the others.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from medseg.batch.runner import BatchReport, BatchSettings, ProgressCallback, run_batch
from medseg.batch.scans import dicom_scan_key
from medseg.errors import ConfigError
from medseg.pacs.client import SeriesInfo
from medseg.pacs.config import PacsConfig, ResultKind
from medseg.pacs.connect import connected
from medseg.pacs.pull import PullReport, pull, pulled_series_folder
from medseg.pacs.push import PushReport, push, read_seg_header
from medseg.pacs.state import DeliveryLedger, delivery_key, incoming_folder


@dataclass
class PacsBatchReport:
    """The three parts of a PACS batch."""

    batch: BatchReport
    pull: PullReport | None = None
    push: PushReport | None = None
    removed_pulled: int = 0

    @property
    def exit_code(self) -> int:
        """1 when any series, scan or delivery failed."""
        failed = self.batch.failed or (self.pull and self.pull.failed)
        return 1 if failed or (self.push and self.push.failed) else 0


def run_pacs_batch(
    *,
    model_uri: str,
    out_dir: Path,
    from_pacs: PacsConfig | None,
    to_pacs: PacsConfig | None,
    scans_root: Path | None = None,
    keep_pulled: bool = False,
    settings: BatchSettings | None = None,
    on_progress: ProgressCallback | None = None,
) -> PacsBatchReport:
    """Pull (``from_pacs``) or take ``scans_root``, segment, push (``to_pacs``).

    Raises:
        ConfigError: neither ``scans_root`` nor ``from_pacs`` is given.
        PacsError: the source PACS cannot be searched.
        ModelLoadError: the model URI cannot be resolved or loaded.
    """
    from medseg.batch.runner import pinned_model_uri

    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = settings or BatchSettings()
    if to_pacs is not None and ResultKind.RTSTRUCT in to_pacs.results:  # it is to be sent
        settings = replace(settings, outputs=replace(settings.outputs, rtstruct=True))
    model_uri = pinned_model_uri(model_uri, settings.tracking_uri)
    shard = settings.shard
    owns = lambda series_uid: shard.owns(dicom_scan_key(series_uid))  # noqa: E731
    pulled = None
    if from_pacs is not None:
        scans_root = incoming_folder(out_dir)
        with connected(from_pacs.connection) as client:
            pulled = pull(
                client,
                from_pacs,
                scans_root,
                skip=_delivered_to(out_dir, model_uri, to_pacs),
                owns=owns,
            )
    if scans_root is None:
        raise ConfigError("give SCANS_ROOT or --from-pacs")
    batch = run_batch(scans_root, model_uri, out_dir, settings=settings, on_progress=on_progress)
    report = PacsBatchReport(batch, pulled)
    if to_pacs is not None:
        incoming = scans_root if from_pacs is not None else None
        with connected(to_pacs.connection) as client:
            report.push = push(client, to_pacs, out_dir, incoming=incoming, owns=owns)
        if from_pacs is not None and not keep_pulled:
            report.removed_pulled = _remove_delivered(out_dir, scans_root, report.push)
    return report


def _delivered_to(
    out_dir: Path, model_uri: str, to_pacs: PacsConfig | None
) -> Callable[[SeriesInfo], bool]:
    """Whether a series' results from this model reached ``to_pacs`` already (not pulled again)."""
    if to_pacs is None:
        return lambda series: False
    ledger = DeliveryLedger(out_dir)
    destination = to_pacs.connection.name
    return lambda series: ledger.is_sent(delivery_key(series.series_uid, model_uri, destination))


def _remove_delivered(out_dir: Path, incoming: Path, pushed: PushReport) -> int:
    """Delete the pulled images of the series delivered now or before; returns how many."""
    removed = 0
    for case_id in pushed.sent + pushed.already_sent:
        for seg_path in (out_dir / case_id).glob("*_seg.dcm"):
            folder = pulled_series_folder(incoming, read_seg_header(seg_path).source_series_uid)
            if folder.exists():
                shutil.rmtree(folder)
                removed += 1
    return removed
