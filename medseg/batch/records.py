"""What a batch records per scan: ``result.json`` of a finished scan, a failure record otherwise.

Both are plain JSON objects. ``source`` (the scan's path relative to the scans root) is present
only when the batch uses ``--case-ids folder``: with the default anonymous ids, nothing written
names a folder or file that may carry a patient's name, and failure reasons have such paths
replaced by ``<scan>`` (``redact``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medseg import __version__

REDACTED = "<scan>"


def now_utc() -> str:
    """The current time as ISO 8601 UTC, to the second."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


@dataclass
class ScanResult:
    """A finished scan: the content of ``OUT_DIR/<case_id>/result.json``."""

    case_id: str
    seconds: float
    outputs: list[str]
    structures: list[str]  # the model's structure names in label order
    volumes_ml: dict[str, float]
    model: str
    finished_at: str = field(default_factory=now_utc)
    model_version: str | None = None
    model_run_id: str | None = None
    source: str | None = None
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


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of the ``secrets`` (paths, folder names) made ``<scan>``.

    Longer secrets are replaced first, so an absolute path goes as a whole before its parts;
    a secret is replaced only where it is not part of a longer name (folder ``ct`` leaves the
    word ``unexpected`` alone).

    Example:
        >>> redact("/data/DOE^JOHN/t1.nii.gz: not gzip", ["/data/DOE^JOHN/t1.nii.gz", "t1"])
        '<scan>: not gzip'
    """
    for secret in sorted({s for s in secrets if s and s != "."}, key=len, reverse=True):
        pattern = rf"(?<![A-Za-z0-9._-]){re.escape(secret)}(?![A-Za-z0-9_-])"
        text = re.sub(pattern, REDACTED, text)
    return text


def redact_scan(text: str, *, source: str, files: Iterable[Path], root: Path) -> str:
    """``text`` without a scan's source, file paths, folders (absolute and relative to
    ``root``) and ``root`` itself: a failure reason safe to write with anonymous case ids."""
    files = list(files)
    folders = {path.parent for path in files}
    secrets = {source, str(root), *(str(path) for path in files), *(str(f) for f in folders)}
    secrets |= {str(f.relative_to(root)) for f in folders if f.is_relative_to(root)}
    return redact(text, secrets)


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
