"""Keeping identifying strings out of what medseg writes.

Raw source paths, DICOM UIDs and patient names must never reach a manifest, log or run
record. ``hash_identifier`` turns such a string into a short, stable token that still tells
two sources apart and lets someone holding the original string check which one it was. It is
a one-way fingerprint, not encryption: a low-entropy string can be found again by trying
candidates, so it hides identifiers from casual readers, not from a determined attacker.
"""

from __future__ import annotations

import hashlib

IDENTIFIER_HASH_LENGTH = 16


def hash_identifier(text: str) -> str:
    """First 16 hex digits of the SHA-256 of ``text`` (UTF-8).

    Example:
        >>> hash_identifier("abc")
        'ba7816bf8f01cfea'
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:IDENTIFIER_HASH_LENGTH]
