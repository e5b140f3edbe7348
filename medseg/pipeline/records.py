"""Stage records (``<work dir>/<stage>/stage.json``) and the fingerprints that decide skipping.

A stage's fingerprint hashes its kind, its options, the content of the files it reads
(configuration files, small files: SHA-256) or their size and modification time (large files
and every file of a folder), and the output digests of the earlier stages it needs. A stage is
skipped when its record says ``done`` with the same fingerprint and its output paths still
exist. The output digest is the fingerprint itself for deterministic stages, and also covers
what the stage provided (e.g. the training run id) for the others, so a retrained model makes
everything after it run again.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medseg import __version__
from medseg.io.atomic import write_json_atomic

RECORD_NAME = "stage.json"
_CONTENT_HASH_LIMIT = 4 * 1024 * 1024  # bytes; larger files are fingerprinted by size + mtime


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def path_fingerprint(path: Path) -> str:
    """SHA-256 of a small file's bytes; size + mtime of larger files and of a folder's files."""
    if not path.exists():
        return "missing"
    if path.is_file():
        stat = path.stat()
        if stat.st_size <= _CONTENT_HASH_LIMIT:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    entries = []
    for child in sorted(path.rglob("*")):
        if child.is_file():
            stat = child.stat()
            entries.append((child.relative_to(path).as_posix(), stat.st_size, stat.st_mtime_ns))
    return _digest(entries)


def stage_fingerprint(
    *, kind: str, options: dict[str, Any], inputs: dict[str, Path], upstream: dict[str, str]
) -> str:
    """Fingerprint of one stage run (see the module docstring)."""
    return _digest(
        {
            "kind": kind,
            "options": options,
            "inputs": {name: path_fingerprint(path) for name, path in sorted(inputs.items())},
            "upstream": upstream,
        }
    )


def output_digest(fingerprint: str, provides: dict[str, Any], *, deterministic: bool) -> str:
    """Digest later stages see for this stage's outputs."""
    return fingerprint if deterministic else _digest({"fp": fingerprint, "provides": provides})


@dataclass
class StageRecord:
    """What ``stage.json`` holds."""

    stage: str
    kind: str
    status: str  # running, done or failed
    fingerprint: str
    digest: str = ""
    provides: dict[str, Any] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)  # keys of provides that are paths
    run_id: str | None = None
    problems: list[str] = field(default_factory=list)
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)  # what the CLI shows
    started: float = field(default_factory=time.time)
    seconds: float = 0.0
    medseg_version: str = __version__

    def values(self) -> dict[str, Any]:
        """``provides`` with path values as ``Path`` again."""
        return {k: Path(v) if k in self.paths else v for k, v in self.provides.items()}

    def outputs_exist(self) -> bool:
        return all(Path(self.provides[key]).exists() for key in self.paths)

    def save(self, folder: Path) -> None:
        write_json_atomic(folder / RECORD_NAME, asdict(self))


def encode_provides(provides: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """JSON-able ``provides`` and the keys whose values are paths."""
    paths = sorted(k for k, v in provides.items() if isinstance(v, Path))
    return {k: str(v) if k in paths else v for k, v in provides.items()}, paths


def load_record(folder: Path) -> StageRecord | None:
    """The stage's record, or None when missing or unreadable (the stage then runs)."""
    try:
        payload = json.loads((folder / RECORD_NAME).read_text(encoding="utf-8"))
        return StageRecord(**payload)
    except (OSError, ValueError, TypeError):
        return None
