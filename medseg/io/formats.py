"""Volume file formats: which reader and writer a file name calls for.

Every scan or label map file medseg reads from a user (``ingest``, ``predict``, ``batch``,
``import-dataset``, ``evaluate``) goes through this registry; DICOM series are found by
content instead (``medseg.io.dicom``). Built in: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``,
``.nhdr``) and MetaImage (``.mha``, ``.mhd``).

A format is any object with a ``name``, its ``suffixes`` (lower case, the first is the one
written by default) and ``read(path) -> Volume`` / ``write(volume, path) -> Path`` in the
convention of ``medseg.volume`` (array ``[i, j, k, ...]``, RAS affine). ``read`` raises an
``InputFileError`` naming the file. A format whose header may name other files (a detached
NRRD or MetaImage header and its data file) also has ``data_files(path)``; discovery then
takes those files as part of the scan. Adding one is one call::

    from medseg.io.formats import register_format

    register_format(MyFormat())  # name "myfmt", suffixes (".myf",)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

from medseg.errors import UnknownFormatError, VolumeFileError
from medseg.volume import Volume


@runtime_checkable
class VolumeFormat(Protocol):
    """A file format medseg reads scans and label maps from and writes them to."""

    @property
    def name(self) -> str:
        """What ``--output-format`` and messages call it: ``"nrrd"``."""
        ...

    @property
    def suffixes(self) -> tuple[str, ...]:
        """File name endings, lower case with the dot; the first is written by default."""
        ...

    def read(self, path: Path) -> Volume:
        """The volume in ``path``; raises an ``InputFileError`` naming the file."""
        ...

    def write(self, volume: Volume, path: Path) -> Path:
        """Write ``volume`` to ``path`` (atomically); return the path."""
        ...


@runtime_checkable
class DetachedFormat(VolumeFormat, Protocol):
    """A format whose header file may keep its voxels in other files."""

    def data_files(self, path: Path) -> tuple[Path, ...]:
        """The files besides ``path`` that its header names (none when it holds its voxels)."""
        ...


_FORMATS: dict[str, VolumeFormat] = {}


def register_format(volume_format: VolumeFormat) -> VolumeFormat:
    """Make ``volume_format`` known to discovery, datasets, evaluate and ``--output-format``.

    Raises:
        ValueError: its name or one of its suffixes is registered already.
    """
    name = volume_format.name
    if name in _FORMATS:
        raise ValueError(f"a volume format named {name!r} is registered already")
    for suffix in volume_format.suffixes:
        if not suffix.startswith(".") or suffix != suffix.lower():
            raise ValueError(f"{name}: suffix {suffix!r} must be lower case and start with '.'")
        for other in _FORMATS.values():
            if suffix in other.suffixes:
                raise ValueError(f"{name}: suffix {suffix} belongs to format {other.name!r}")
    _FORMATS[name] = volume_format
    return volume_format


def unregister_format(name: str) -> None:
    """Forget the format ``name`` (for tests and plug-ins that replace a built-in)."""
    _FORMATS.pop(name, None)


def registered_formats() -> tuple[VolumeFormat, ...]:
    """Every registered format, in registration order (the built-ins first)."""
    return tuple(_FORMATS.values())


def format_names() -> tuple[str, ...]:
    """Names of the registered formats, sorted."""
    return tuple(sorted(_FORMATS))


def format_named(name: str) -> VolumeFormat:
    """The format called ``name`` (case-insensitive).

    Raises:
        UnknownFormatError: no such format; the message lists the known ones.
    """
    found = _FORMATS.get(name.lower())
    if found is None:
        raise UnknownFormatError(
            f"unknown volume format {name!r}; known: {', '.join(format_names())}"
        )
    return found


def _matching_suffix(path: str | os.PathLike[str]) -> tuple[str, VolumeFormat] | None:
    name = Path(path).name.lower()
    matches = [
        (suffix, fmt)
        for fmt in _FORMATS.values()
        for suffix in fmt.suffixes
        if name.endswith(suffix) and len(name) > len(suffix)
    ]
    return max(matches, key=lambda match: len(match[0]), default=None)


def format_for_path(path: str | os.PathLike[str]) -> VolumeFormat | None:
    """The format a file name calls for (longest matching suffix), or None."""
    match = _matching_suffix(path)
    return match[1] if match else None


def is_volume_path(path: str | os.PathLike[str]) -> bool:
    """Whether a registered format reads files named like ``path``."""
    return _matching_suffix(path) is not None


def volume_stem(path: str | os.PathLike[str]) -> str:
    """File name without its format's suffix: ``case_007.nii.gz``, ``case_007.nrrd`` ->
    ``case_007`` (the whole name when no format matches)."""
    name = Path(path).name
    match = _matching_suffix(path)
    return name[: -len(match[0])] if match else name


def volume_suffix(path: str | os.PathLike[str]) -> str:
    """The suffix of ``path`` that its format matched, as written: ``case.nii.gz`` ->
    ``.nii.gz``, ``case.NHDR`` -> ``.NHDR`` (empty when no format matches)."""
    name = Path(path).name
    return name[len(volume_stem(path)) :]


def volume_files_named(folder: str | os.PathLike[str], stem: str) -> list[Path]:
    """The files ``<folder>/<stem><suffix>`` that exist, for every registered suffix (NIfTI
    first): a label map or prediction found by case id, whatever its format."""
    folder = Path(folder)
    candidates = [folder / f"{stem}{s}" for fmt in _FORMATS.values() for s in fmt.suffixes]
    return [path for path in candidates if path.is_file()]


def data_files(path: str | os.PathLike[str]) -> tuple[Path, ...]:
    """Files besides ``path`` that hold its voxels (a detached header's data file)."""
    fmt = format_for_path(path)
    if isinstance(fmt, DetachedFormat):
        return fmt.data_files(Path(path))
    return ()


def read_volume(path: str | os.PathLike[str]) -> Volume:
    """Read the scan or label map in ``path`` with the reader its name calls for.

    Raises:
        VolumeFileError: no registered format reads files named so.
        InputFileError: the file is unreadable or not a 3D/4D image (the format's error).
    """
    path = Path(path)
    fmt = format_for_path(path)
    if fmt is None:
        suffixes = ", ".join(s for f in _FORMATS.values() for s in f.suffixes)
        raise VolumeFileError(path, f"not a volume file medseg reads (known: {suffixes})")
    return fmt.read(path)


def write_volume(
    volume: Volume, path: str | os.PathLike[str], volume_format: VolumeFormat | str | None = None
) -> Path:
    """Write ``volume`` to ``path`` in ``volume_format`` (a format or its name; default: the
    one the name calls for); return the path. The folder is created if need be.

    Raises:
        UnknownFormatError: ``volume_format`` names no registered format.
        VolumeFileError: no format given and none writes files named like ``path``, or the
            name does not end in one of the format's suffixes.
    """
    path = Path(path)
    if isinstance(volume_format, str):
        volume_format = format_named(volume_format)
    if volume_format is None:
        volume_format = format_for_path(path)
        if volume_format is None:
            raise VolumeFileError(path, "no volume format writes files named so")
    elif format_for_path(path) is not volume_format:
        raise VolumeFileError(
            path,
            f"a {volume_format.name} file name ends in {' or '.join(volume_format.suffixes)}",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return volume_format.write(volume, path)


def output_name(stem: str, volume_format: VolumeFormat | str) -> str:
    """``stem`` with the default suffix of ``volume_format``: ``case_007.nrrd``."""
    if isinstance(volume_format, str):
        volume_format = format_named(volume_format)
    return f"{stem}{volume_format.suffixes[0]}"


def _register_builtins() -> None:
    from medseg.io.itk import METAIMAGE, NRRD
    from medseg.io.nifti import NIFTI

    for fmt in (NIFTI, NRRD, METAIMAGE):
        register_format(fmt)


_register_builtins()
