"""Atomic output: write to a temporary file beside the target, then rename over it.

A reader never sees a half-written file under the final name, and an interrupted write
leaves at most a ``.tmp-*`` file that the next run overwrites or ignores.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TEMPORARY_PREFIX = ".tmp-"  # every temporary name starts so; discovery never takes one for a scan


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success.

    The temporary name keeps the target's suffixes (``.nii.gz``) so writers that choose a
    format from the file name still work.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f"{TEMPORARY_PREFIX}{target.name}-", suffix=suffix, dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(target: str | os.PathLike[str], payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``target`` atomically."""
    write_text_atomic(target, json.dumps(payload, indent=2, sort_keys=True) + "\n")
