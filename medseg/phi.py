"""Keeping identifying strings out of what medseg writes.

Raw source paths, DICOM UIDs and patient names must never reach a manifest, log or run
record. ``hash_identifier`` turns such a string into a short, stable token that still tells
two sources apart and lets someone holding the original string check which one it was. It is
a one-way fingerprint, not encryption: a low-entropy string can be found again by trying
candidates, so it hides identifiers from casual readers, not from a determined attacker.

``redact_scan`` removes a scan's paths, folder and file names from a message (an error reason,
a log line) before it is written with anonymous case ids.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

IDENTIFIER_HASH_LENGTH = 16
REDACTED = "<scan>"


def hash_identifier(text: str) -> str:
    """First 16 hex digits of the SHA-256 of ``text`` (UTF-8).

    Example:
        >>> hash_identifier("abc")
        'ba7816bf8f01cfea'
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:IDENTIFIER_HASH_LENGTH]


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


def _may_name_someone(name: str) -> bool:
    """File names worth hiding: any with a letter, or long numbers (an MRN); not ``1``."""
    return any(c.isalpha() for c in name) or len(name) >= 6


def redact_scan(text: str, *, source: str, files: Iterable[Path], root: Path) -> str:
    """``text`` without a scan's source, file paths and names, folders (absolute and relative
    to ``root``) and ``root`` itself: a message safe to write with anonymous case ids."""
    files = list(files)
    folders = {path.parent for path in files}
    secrets = {source, str(root), *(str(path) for path in files), *(str(f) for f in folders)}
    secrets |= {str(p.relative_to(root)) for p in [*files, *folders] if p.is_relative_to(root)}
    secrets |= {path.name for path in files if _may_name_someone(path.name)}
    return redact(text, secrets)
