"""What medseg keeps about its PACS traffic, in ``OUT/.pacs/`` beside the batch outputs::

    OUT/.pacs/incoming/<series key>/*.dcm   pulled series (pull.json last: complete)
    OUT/.pacs/staging/                      series being pulled (a killed pull's leftovers)
    OUT/.pacs/deliveries/<delivery key>.json   one record per series, model and destination
    OUT/.pacs/deliveries.jsonl              every delivery record, rebuilt after each push

Keys are hashes (``medseg.phi.hash_identifier``) of the SeriesInstanceUID (series key) and of
the SeriesInstanceUID with the model URI and the destination's name (delivery key): file names
reveal no UID. A delivery record is what makes pushing idempotent: a series sent with a model
version to a PACS is not sent there again with it, and a failed delivery is retried by the next
push (its results stay in OUT). Another destination (a research archive) gets its own records.
The incoming folder holds patient images: it is created with mode 0700.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.batch.records import now_utc
from medseg.io.atomic import write_json_atomic, write_text_atomic
from medseg.phi import hash_identifier

STATE_FOLDER = ".pacs"
INCOMING_FOLDER = "incoming"
PULL_RECORD = "pull.json"


def state_folder(out_dir: Path) -> Path:
    """``OUT/.pacs``."""
    return Path(out_dir) / STATE_FOLDER


def incoming_folder(out_dir: Path) -> Path:
    """Where pulled series are kept (private to the user)."""
    folder = state_folder(out_dir) / INCOMING_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder


def series_key(series_uid: str) -> str:
    """The folder name of a pulled series."""
    return hash_identifier(f"series:{series_uid}")


def delivery_key(series_uid: str, model: str, destination: str) -> str:
    """The record name of the results of ``model`` for a series, sent to ``destination``."""
    return hash_identifier(f"delivery:{series_uid}\n{model}\n{destination}")


@dataclass
class Delivery:
    """Sending one case's results back: ``OUT/.pacs/deliveries/<key>.json``."""

    case_id: str
    model: str
    destination: str  # the PACS file's connection name
    status: str  # "sent" or "failed"
    objects: dict[str, str] = field(default_factory=dict)  # kind -> "sent" / "already there"
    attempts: int = 0
    time: str = field(default_factory=now_utc)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object, without unset fields."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


class DeliveryLedger:
    """The delivery records of one OUT folder."""

    def __init__(self, out_dir: Path) -> None:
        self.folder = state_folder(out_dir) / "deliveries"

    def get(self, key: str) -> Delivery | None:
        """The record of ``key``, or None (also for an unreadable record: resend)."""
        names = {f.name for f in dataclasses.fields(Delivery)}
        try:
            payload = json.loads((self.folder / f"{key}.json").read_text(encoding="utf-8"))
            return Delivery(**{k: v for k, v in payload.items() if k in names})
        except (OSError, ValueError, TypeError, AttributeError):  # unreadable or incomplete
            return None

    def is_sent(self, key: str) -> bool:
        """Whether the results of ``key`` reached the PACS."""
        record = self.get(key)
        return record is not None and record.status == "sent"

    def record(self, key: str, delivery: Delivery) -> None:
        """Write (replace) the record of ``key`` atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.folder / f"{key}.json", delivery.to_json())

    def write_listing(self) -> Path:
        """Rebuild ``OUT/.pacs/deliveries.jsonl`` (sorted by case id) from the records."""
        records = [self.get(path.stem) for path in sorted(self.folder.glob("*.json"))]
        lines = [
            json.dumps(record.to_json(), sort_keys=True)
            for record in sorted(filter(None, records), key=lambda r: r.case_id)
        ]
        listing = self.folder.parent / "deliveries.jsonl"
        write_text_atomic(listing, "".join(line + "\n" for line in lines))
        return listing
