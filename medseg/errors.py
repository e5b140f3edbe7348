"""Exception types of medseg. Messages always name the offending file and the problem."""

from __future__ import annotations


class MedsegError(Exception):
    """Base class of every error medseg raises on purpose."""


class InputFileError(MedsegError):
    """A file could not be read or is not what it claims to be."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple:  # picklable across worker processes
        return (type(self), (self.path, self.problem))


class NiftiError(InputFileError):
    """A NIfTI file is unreadable or has an invalid header/affine."""


class DicomFileError(InputFileError):
    """A single DICOM file is unreadable, malformed, or its pixels cannot be decoded."""


class DicomSeriesError(MedsegError):
    """A DICOM series cannot become a correct volume (gaps, duplicates, mixed geometry...)."""

    def __init__(self, source: object, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")

    def __reduce__(self) -> tuple:  # picklable across worker processes
        return (type(self), (self.source, self.problem))


class MissingSlicesError(DicomSeriesError):
    """Slice positions show slices missing from an otherwise regular series."""


class DuplicateSlicePositionError(DicomSeriesError):
    """Several different images sit at the same slice position."""


class TooFewSlicesError(DicomSeriesError):
    """A series has too few slices to define a volume's slice spacing."""


class GeometryMismatchError(MedsegError):
    """Two volumes that must share a voxel grid (image and label) do not."""


class ManifestError(MedsegError):
    """A data manifest is malformed or refers to missing or changed files."""
