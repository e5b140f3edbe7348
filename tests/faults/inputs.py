"""Bad inputs for the fault tests, written as real files: phantom NIfTI with NaN/Inf voxels,
a 4D scan, and files or folders the code under test cannot read.

Permissions do not stop root, and tests may run as root. ``reading_denied`` therefore runs
the code with the effective user ``nobody`` when the tests run as root (after ``chmod 000``),
so a folder or file without read permission is really unreadable for it; the tree must then
live in a folder ``nobody`` can reach (``shared_folder``) and be readable by all
(``readable_by_all``), with an output folder everyone may write.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medseg.io.nifti import write_nifti
from tests.phantoms import small_phantom

PHANTOM_VOXELS = 49 * 39 * 33  # 63,063


def write_phantom_with(
    path: Path, *, nan: int = 0, positive_infinite: int = 0, negative_infinite: int = 0
) -> Path:
    """Phantom 0 as float32 NIfTI with that many NaN, +Inf and -Inf voxels along a diagonal."""
    ct, _ = small_phantom(0)
    array = ct.array.astype(np.float32)
    values = [np.nan] * nan + [np.inf] * positive_infinite + [-np.inf] * negative_infinite
    for index, value in enumerate(values):
        array[10 + index, 10 + index, 10 + index] = value
    return write_nifti(ct.with_array(array), path)


def write_all_nan(path: Path) -> Path:
    """Phantom 0's grid with every voxel NaN."""
    ct, _ = small_phantom(0)
    return write_nifti(ct.with_array(np.full(ct.shape, np.nan, np.float32)), path)


def write_four_d(path: Path, volumes: int = 2) -> Path:
    """Phantom 0 repeated along a 4th axis (e.g. a time series)."""
    ct, _ = small_phantom(0)
    return write_nifti(ct.with_array(np.stack([ct.array] * volumes, axis=-1)), path)


@contextlib.contextmanager
def shared_folder() -> Iterator[Path]:
    """A new folder every user may enter and write (removed afterwards)."""
    folder = Path(tempfile.mkdtemp(prefix="medseg-faults-"))
    folder.chmod(0o777)
    try:
        yield folder
    finally:
        for path in folder.rglob("*"):  # chmod 000 folders would stop rmtree
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(folder)


def readable_by_all(root: Path) -> None:
    """Let every user read the files and enter the folders under ``root`` (atomic writes
    create files readable by their owner only)."""
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


@contextlib.contextmanager
def reading_denied(*paths: Path) -> Iterator[None]:
    """Within the block, ``paths`` cannot be read by this process (see the module docstring)."""
    modes = {path: path.stat().st_mode for path in paths}
    for path in paths:
        path.chmod(0)
    as_root = os.geteuid() == 0
    if as_root:
        nobody = pwd.getpwnam("nobody")  # a KeyError here means no unprivileged user exists
        os.setegid(nobody.pw_gid)
        os.seteuid(nobody.pw_uid)
    try:
        yield
    finally:
        if as_root:
            os.seteuid(0)
            os.setegid(0)
        for path, mode in modes.items():
            path.chmod(mode)
