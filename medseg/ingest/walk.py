"""List every file under a folder without losing any silently.

``pathlib.Path.rglob`` skips folders it may not list, does not enter symbolic links to folders
and drops broken links and FIFOs without a word; a scan inside any of them would simply be
missing from the results. ``walk_files`` instead reports each of them:

* a folder that cannot be listed, a broken or looping symbolic link, a FIFO, socket or device
  is ``unreadable`` (an ``UnreadableInputError`` naming it): it may hold a scan;
* symbolic links to folders are followed, and every real folder is searched once: a link to a
  folder already searched (a loop back to an ancestor, or a second link to the same folder)
  is not followed again and is listed in ``links_not_followed`` with the reason. Links are
  followed only after the tree without them is searched, so a folder reachable both ways is
  named by its path without links;
* medseg's own temporary files and folders (``.tmp-*`` of an interrupted atomic write, batch
  ``.staging`` folders) are listed in ``temporary`` and never taken for scans.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import UnreadableInputError
from medseg.io.atomic import TEMPORARY_PREFIX

BATCH_STAGING_FOLDER = ".staging"  # medseg.batch.layout: outputs being written
ALREADY_SEARCHED = "links to a folder searched already (a loop, or a second link to it)"


@dataclass
class FileWalk:
    """What ``walk_files`` found."""

    files: list[Path] = field(default_factory=list)
    unreadable: list[UnreadableInputError] = field(default_factory=list)
    links_not_followed: list[tuple[Path, str]] = field(default_factory=list)
    temporary: list[Path] = field(default_factory=list)


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary file or folder medseg writes on the way to an output."""
    return path.name.startswith(TEMPORARY_PREFIX) or path.name == BATCH_STAGING_FOLDER


def _folder_key(path: Path) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_dev, status.st_ino


def _not_regular(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def walk_files(root: Path, *, exclude: Path | None = None) -> FileWalk:
    """Every regular file at or under ``root`` (sorted), and what could not be searched.

    ``exclude`` (a folder, e.g. the output folder inside the input) is left out entirely.
    """
    walk = FileWalk()
    excluded = os.path.realpath(exclude) if exclude is not None else None
    searched: set[tuple[int, int]] = set()
    pending: list[Path] = [Path(root)]
    linked: list[Path] = []
    while pending or linked:
        folder = pending.pop() if pending else linked.pop()
        try:
            key = _folder_key(folder)
            if key in searched:
                walk.links_not_followed.append((folder, ALREADY_SEARCHED))
                continue
            searched.add(key)
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as error:
            walk.unreadable.append(
                UnreadableInputError(folder, f"cannot list the folder ({error.strerror})")
            )
            continue
        for entry in entries:
            folders = linked if entry.is_symlink() else pending
            _visit(Path(entry.path), walk, folders, excluded)
    walk.files.sort()
    walk.links_not_followed.sort()
    return walk


def _visit(path: Path, walk: FileWalk, folders: list[Path], excluded: str | None) -> None:
    """File ``path`` where it belongs: a file, a folder to search, temporary or unreadable."""
    try:
        mode = os.stat(path).st_mode  # follows symbolic links
    except OSError as error:
        problem = "broken symbolic link" if path.is_symlink() else "cannot be read"
        walk.unreadable.append(UnreadableInputError(path, f"{problem} ({error.strerror})"))
        return
    if is_temporary(path):
        walk.temporary.append(path)
    elif stat.S_ISDIR(mode):
        if excluded is None or not Path(os.path.realpath(path)).is_relative_to(excluded):
            folders.append(path)
    elif stat.S_ISREG(mode):
        walk.files.append(path)
    else:
        walk.unreadable.append(
            UnreadableInputError(path, f"{_not_regular(mode)}, not a regular file: not read")
        )
