"""What a batch records per scan: ``result.json`` of a finished scan, a failure record otherwise.

Both are plain JSON objects. ``source`` (the scan's path relative to the scans root) is present
only when the batch uses ``--case-ids folder``: with the default anonymous ids, nothing written
names a folder or file that may carry a patient's name, and failure reasons have such paths
replaced by ``<scan>`` (``medseg.phi.redact_scan``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from medseg import __version__


def now_utc() -> str:
    """The current time as ISO 8601 UTC, to the second."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


@dataclass
class ScanResult:
    """A finished scan: the content of ``OUT_DIR/<case_id>/result.json``."""

    case_id: str
    seconds: float
    outputs: list[str]
    structures: list[str]  # the structure names written, in label order: all of the model's
    volumes_ml: dict[str, float]
    model: str
    # each structure's mean largest class probability (medseg.infer.confidence; None: not found)
    confidence: dict[str, float | None] | None = None
    finished_at: str = field(default_factory=now_utc)
    model_version: str | None = None
    model_run_id: str | None = None
    ensemble_members: int | None = None  # networks averaged, for an ensemble model
    source: str | None = None
    corrections: list[str] | None = None  # done to the scan's voxels (e.g. NaN replaced)
    non_finite_replaced: dict[str, float] | None = None  # with --non-finite replace-min
    structures_selected: list[str] | None = None  # with --structures: only these were asked
    fast: bool | None = None  # True: predicted by the low-resolution members alone (--fast)
    status: str = "done"
    medseg_version: str = __version__

    def to_json(self) -> dict[str, Any]:
        """The JSON object, without the fields that are not set."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> ScanResult:
        """Read back ``to_json`` (fields unknown to this version are ignored)."""
        return cls(**_known_fields(cls, payload))


@dataclass
class ScanFailure:
    """A scan that could not be processed: one line of ``failures.jsonl``."""

    case_id: str
    reason: str
    error_type: str
    time: str = field(default_factory=now_utc)
    seconds: float = 0.0
    source: str | None = None
    status: str = "failed"

    def to_json(self) -> dict[str, Any]:
        """The JSON object, without the fields that are not set."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> ScanFailure:
        """Read back ``to_json`` (fields unknown to this version are ignored)."""
        return cls(**_known_fields(cls, payload))


def _known_fields(cls: type, payload: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {key: value for key, value in payload.items() if key in names}


_MODEL_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
_RUN = re.compile(r"^runs:/(?P<run>[0-9a-f]{32})(?:/|$)")


def model_reference(uri: str) -> dict[str, str]:
    """The registry version and run a model URI names literally (``models:/NAME/3``,
    ``runs:/ID/model``); empty for aliases and folders, which name no fixed version."""
    reference = {}
    if match := _MODEL_VERSION.match(uri):
        reference["model_version"] = match["version"]
    if match := _RUN.match(uri):
        reference["model_run_id"] = match["run"]
    return reference
