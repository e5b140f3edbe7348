"""Exception types of medseg. Messages always name the offending file and the problem."""

from __future__ import annotations


class MedsegError(Exception):
    """Base class of every error medseg raises on purpose."""


class UnknownChoiceError(MedsegError, ValueError):
    """A name is not among the known choices (an architecture, a loss, a backend...).

    Also a ``ValueError``, so that pydantic validators that look a name up report it as an
    invalid value of the field.
    """


class LocatedError(MedsegError):
    """An error about one place (a file, a series): the message is ``"<where>: <problem>"``."""

    def __init__(self, where: object, problem: str) -> None:
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")

    def __reduce__(self) -> tuple:  # picklable across worker processes
        return (type(self), (self.where, self.problem))


class InputFileError(LocatedError):
    """A file could not be read or is not what it claims to be."""

    @property
    def path(self) -> str:
        """The offending file."""
        return self.where


class NiftiError(InputFileError):
    """A NIfTI file is unreadable or has an invalid header/affine."""


class VolumeFileError(InputFileError):
    """A scan file of a registered format other than DICOM (NRRD, MetaImage...) is unreadable,
    not what its name says, not a 3D image of scalar or per-voxel channel values, or has no
    reader at all (``medseg.io.formats``)."""


class UnknownFormatError(MedsegError):
    """A volume file format named (e.g. ``--output-format``) is not registered."""


class DicomFileError(InputFileError):
    """A single DICOM file is unreadable, malformed, or its pixels cannot be decoded."""


class DicomSeriesError(LocatedError):
    """A DICOM series cannot become a correct volume (gaps, duplicates, mixed geometry...)."""

    @property
    def source(self) -> str:
        """The offending series (its folder and number)."""
        return self.where


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


class PacsError(MedsegError):
    """Talking to a PACS failed; the message names the PACS and what went wrong."""


class PacsUnavailableError(PacsError):
    """The PACS cannot be reached or answered with a server error: worth retrying later."""


class PacsSetupError(PacsError):
    """The PACS file does not work: TLS verification or credentials failed (not retried)."""


class PacsRefusedError(PacsError):
    """The PACS answered but refused an object or a request (e.g. a STOW-RS failure)."""


class UnreadableInputError(InputFileError):
    """A file or folder under the input cannot be read at all (permissions, a broken or looping
    symbolic link, a FIFO or device instead of a regular file)."""


class UnreadableSliceError(DicomSeriesError):
    """A series' folder holds files that cannot be read: they may be its slices, so the series
    is not built (a missing first or last slice would leave no gap to detect)."""


class NonFiniteVoxelsError(LocatedError):
    """A scan holds NaN or infinite voxels, which no segmentation of it can be right about."""


class ScanChannelsError(LocatedError):
    """A scan has another number of channels (4th axis) than the model takes."""
