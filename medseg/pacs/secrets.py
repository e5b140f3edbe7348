"""Credentials named by a PACS file: read from an environment variable or a secrets file.

A secrets file holds the value alone (trailing newline ignored), as Docker and Kubernetes
secrets do. A file that other users may read is refused: a password readable by every account
on a shared batch node is not a secret. Values are never logged or put in messages.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from medseg.errors import SecretError


def read_secret(
    *, env: str | None, file: Path | None, what: str, environ: Mapping[str, str] | None = None
) -> str | None:
    """The secret from variable ``env`` or ``file`` (whichever is named), else None.

    Raises:
        SecretError: the variable is unset or empty, the file is unreadable, empty, or
            readable by group or others.
    """
    environ = os.environ if environ is None else environ
    if env:
        value = environ.get(env, "")
        if not value:
            raise SecretError(f"{what}: environment variable {env} is not set or empty")
        return value
    if file is None:
        return None
    try:
        mode = file.stat().st_mode
        value = file.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as error:
        raise SecretError(f"{file}: cannot read {what}: {error.strerror}") from error
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and not _is_mounted_secret(file):
        raise SecretError(
            f"{file}: {what} file is readable by other users (mode {stat.S_IMODE(mode):o}); "
            f"run: chmod 600 {file}"
        )
    if not value:
        raise SecretError(f"{file}: {what} file is empty")
    return value


def _is_mounted_secret(file: Path) -> bool:
    """Kubernetes mounts secrets through ``..data`` symlinks with mode 0644 by default, in a
    volume only this pod sees; those are accepted."""
    return (file.parent / "..data").is_symlink()
