"""What every medseg run carries: tag names, the standard tags, params flattened to dotted
keys, and the refusal of values that look like file system paths (they can identify people).

Callers log hashes (``medseg.phi.hash_identifier``) and manifest digests instead of paths.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medseg import __version__
from medseg.errors import TrackingError

TAG_MEDSEG_VERSION = "medseg.version"
TAG_GIT_COMMIT = "git.commit"
TAG_MANIFEST_SHA256 = "manifest.sha256"
TAG_STALE = "medseg.stale"
TAG_STALE_MARKED = "medseg.stale.marked"
TAG_RESUMED = "medseg.resumed"
STALE_REASON = "process gone; marked by the next run"
_ABSOLUTE_PATH = re.compile(r"^(?:/[^/\s]|~[/\\]|[A-Za-z]:[\\/]|\\\\|file:)")


def git_commit() -> str:
    """``git rev-parse HEAD`` of the checkout medseg runs from, or ``"unknown"``."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def standard_tags(*, manifest_sha256: str | None = None) -> dict[str, str]:
    """Tags every medseg run carries: package version, git commit and the data manifest digest."""
    tags = {TAG_MEDSEG_VERSION: __version__, TAG_GIT_COMMIT: git_commit()}
    if manifest_sha256 is not None:
        tags[TAG_MANIFEST_SHA256] = manifest_sha256
    return tags


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings into dotted keys with string values (lists become JSON).

    Example:
        >>> flatten_params({"optim": {"lr": 0.01, "betas": [0.9, 0.99]}})
        {'optim.lr': '0.01', 'optim.betas': '[0.9, 0.99]'}
    """
    return {
        key: json.dumps(value, default=str) if isinstance(value, list | tuple) else str(value)
        for key, value in flatten_mapping(params, prefix).items()
    }


def flatten_mapping(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(flatten_mapping(value, prefix=f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def refuse_file_paths(values: Mapping[str, str], *, kind: str) -> None:
    """Raise ``TrackingError`` if a value looks like an absolute path (they can identify people).

    Raises:
        TrackingError: a value looks like an absolute file system path.
    """
    for key, value in values.items():
        if _ABSOLUTE_PATH.match(str(value)):
            raise TrackingError(
                f"{kind} {key!r} looks like an absolute file system path; log a hash of it "
                "(medseg.phi.hash_identifier) instead of the path"
            )


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
