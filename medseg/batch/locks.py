"""Per-case locks, so that batch runs sharing one output folder do each scan once.

The process that works on a case holds ``OUT_DIR/.locks/<case_id>.lock`` locked with
``flock`` from before it looks at the case's outputs until they are published. Another run
that meets the case locked leaves it to that process. The kernel releases a lock when its
holder dies, even by SIGKILL, so a killed run never blocks the next one. Lock files are never
deleted: unlinking a lock file while another process opens it would let two processes hold
"the" lock.

Across hosts this is as good as the file system's ``flock``: local file systems, and NFS
mounts whose client maps ``flock`` onto NFS byte-range locks (Linux NFS clients do so, unless
mounted with ``local_lock=flock`` or ``local_lock=all``; CephFS and GPFS support it; Lustre
only when mounted with ``-o flock``). Where ``flock`` is refused (ENOLCK, EOPNOTSUPP...) the
batch still runs, without locks, after one warning.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

LOCKS_FOLDER = ".locks"
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_warned = False


def lock_path(out_dir: Path, case_id: str) -> Path:
    """The lock file of ``case_id``."""
    return Path(out_dir) / LOCKS_FOLDER / f"{case_id}.lock"


@contextlib.contextmanager
def case_lock(out_dir: Path, case_id: str, *, wait: bool) -> Iterator[bool]:
    """Hold the lock of ``case_id`` for the block; yields whether it is held.

    With ``wait`` the block starts once the current holder (if any) is done or dead; without,
    it gets False at once when another process holds the lock. On a file system without
    ``flock`` it gets True (the work goes on unlocked).
    """
    path = lock_path(out_dir, case_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        yield _lock(fd, path, wait=wait)
    finally:
        os.close(fd)  # releases the lock


def _lock(fd: int, path: Path, *, wait: bool) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno not in _UNSUPPORTED:
            raise
        _warn_unsupported(path, error)
    return True


def _warn_unsupported(path: Path, error: OSError) -> None:
    global _warned
    if not _warned:
        logger.warning(
            "%s: the file system refuses flock (%s); batch runs sharing this output folder "
            "may do the same scan twice",
            path.parent,
            error.strerror,
        )
        _warned = True
