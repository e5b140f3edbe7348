"""Every exception type of medseg, under four bases that say what kind of problem it is.

Messages always name the offending file (or option, or service) and the problem. What the
command line does with each base is documented in ``docs/reliability.md`` ("Errors"):

- ``InputError``: a scan, label, file, folder or array given to medseg is wrong. In a command
  over many cases (``ingest``, ``predict``, ``batch``, ``evaluate``, a pipeline) that case
  fails and is reported, the others go on: exit 1. When the command's own input is wrong
  (nothing can be done): one line ``error: <where>: <what>``, exit 2.
- ``ConfigError``: a configuration, option, plan, pipeline or model is wrong: one line, exit 2,
  before any work.
- ``ServiceError``: a service (MLflow tracking store or registry, a PACS) is unreachable or
  refuses: one line, exit 2; PACS deliveries are retried and then counted as failed (exit 1).
- ``CaseFailure``: one case cannot be finished although its input was read (its worker died,
  its SEG/SR/overlay cannot be made): that case fails, the others go on, exit 1.

``LocatedError`` is a mix-in base for messages of the form ``"<where>: <problem>"`` that
survive worker processes. ``medseg.shutdown.ShutdownRequested`` (a ``BaseException``, not an
error) stops a command on a signal; it lives beside the signal handling that raises it.
"""

from __future__ import annotations


class MedsegError(Exception):
    """Base class of every error medseg raises on purpose."""


class LocatedError(MedsegError):
    """An error about one place (a file, a series, a URI): the message is
    ``"<where>: <problem>"``."""

    def __init__(self, where: object, problem: str) -> None:
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")

    def __reduce__(self) -> tuple:  # picklable across worker processes
        return (type(self), (self.where, self.problem))


# --- the four bases ----------------------------------------------------------------------------


class InputError(MedsegError):
    """A scan, label, file, folder or array given to medseg is wrong (exit 1 for that case in
    a command over many cases, exit 2 when it is the command's own input)."""


class ConfigError(MedsegError):
    """A configuration file, option, plan, pipeline or model is wrong (exit 2).

    Raised as such for a configuration file that is unreadable or holds unknown or invalid
    keys.
    """


class ServiceError(MedsegError):
    """A service (MLflow tracking store or registry, a PACS) is unreachable or refuses
    (exit 2; PACS deliveries are retried, then counted as failed)."""


class CaseFailure(MedsegError):
    """One case cannot be finished although its input was read; the others go on (exit 1)."""


# --- input -------------------------------------------------------------------------------------


class InputFileError(InputError, LocatedError):
    """A file or folder could not be read or is not what it claims to be."""

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


class DicomFileError(InputFileError):
    """A single DICOM file is unreadable, malformed, or its pixels cannot be decoded."""


class UnreadableInputError(InputFileError):
    """A file or folder under the input cannot be read at all (permissions, a broken or looping
    symbolic link, a FIFO or device instead of a regular file)."""


class DicomSeriesError(InputError, LocatedError):
    """A DICOM series cannot become a correct volume (gaps, duplicates, mixed geometry...)."""

    @property
    def source(self) -> str:
        """The offending series (its folder and number)."""
        return self.where


class MissingSlicesError(DicomSeriesError):
    """Slice positions show slices missing from an otherwise regular series."""


class DuplicateSlicePositionError(DicomSeriesError):
    """Several different images sit at the same slice position."""


class UnreadableSliceError(DicomSeriesError):
    """A series' folder holds files that cannot be read: they may be its slices, so the series
    is not built (a missing first or last slice would leave no gap to detect)."""


class NonFiniteVoxelsError(InputError, LocatedError):
    """A scan holds NaN or infinite voxels, which no segmentation of it can be right about."""


class ScanChannelsError(InputError, LocatedError):
    """A scan has another number of channels (4th axis) than the model takes."""


class ChannelsError(InputError, LocatedError):
    """The channels of a multi-channel case do not fit together: a channel file is missing,
    is not co-registered with channel 0, or cases name their channels differently."""


class DicomSegSourceError(InputError, LocatedError):
    """The source images cannot be referenced by a SEG (missing UIDs, mixed series...)."""


class UnsupportedDicomSourceError(DicomSegSourceError):
    """The source is not a classic single-frame CT/MR/PET image (e.g. enhanced multi-frame)."""


class InvalidAffineError(InputError):
    """An affine is not a finite, invertible 4x4 homogeneous matrix."""


class VolumeShapeError(InputError):
    """An array cannot be a volume: fewer than 3 dimensions."""


class GeometryMismatchError(InputError):
    """Two volumes or arrays that must share a voxel grid (image and label) do not."""


class NonIntegralLabelError(InputError):
    """A label map holds fractional, NaN or infinite values."""


class MissingLabelsError(InputError):
    """Cases lack the label maps, or the labelled voxels, that a step needs (a fingerprint,
    training samples)."""


class ManifestError(InputError):
    """A data manifest is malformed or refers to missing or changed files."""


class DatasetLayoutError(InputError):
    """A dataset folder has no recognised layout or an unusable dataset.json."""


class InvalidSampleSourceError(InputError):
    """A case handed to the sampler has malformed arrays or foreground locations, or the cases
    do not fit together (repeated ids, different channel counts, weights on some only)."""


class BorderWeightError(InputError, ValueError):
    """A label map or a parameter of a border-weight map is invalid."""


class CrfInputError(InputError, ValueError):
    """The CRF's inputs do not fit together (shapes, spacing) or are not finite.

    Also a ``ValueError``, as its callers and tests rely on.
    """


class LossInputError(InputError, ValueError):
    """Logits, target or weights handed to a loss have the wrong shape, dtype or values."""


# --- configuration -----------------------------------------------------------------------------


class UnknownChoiceError(ConfigError, ValueError):
    """A name is not among the known choices (an architecture, a loss, a backend...).

    Also a ``ValueError``, so that pydantic validators that look a name up report it as an
    invalid value of the field.
    """


class UnknownFormatError(ConfigError):
    """A volume file format named (e.g. ``--output-format``) is not registered."""


class IgnoreLabelError(ConfigError):
    """Label names declare an ignore label (a label named ``ignore``) that is not the single,
    highest, non-zero label value."""


class RegionsError(ConfigError):
    """Region declarations (label values given as lists, ``regions_class_order``) that do not
    fit together: a missing or extra order entry, a label no region can paint."""


class LossConfigError(ConfigError, ValueError):
    """A loss option or loss spec is unknown or invalid.

    Also a ``ValueError``: the loss specs' pydantic validators raise it.
    """


class AugmentationError(ConfigError):
    """Augmentation options or parameters do not fit the batch they are used with."""


class SamplingConfigError(ConfigError):
    """Patch sampling options are invalid (patch size, slice axis, batch size, foreground
    fraction)."""


class SplitFractionsError(ConfigError):
    """Train/val/test fractions are not three non-negative numbers summing to 1."""


class ArchitectureError(ConfigError):
    """A network's options do not fit its architecture (unknown option, invalid value)."""


class PretrainedEncoderError(ConfigError):
    """Encoder weights could not be read or do not fit the network."""


class BackendError(ConfigError):
    """An inference backend cannot run the model as asked (export failed, a precision the
    backend or CPU lacks, a batch of the wrong shape or size)."""


class PrecisionRefusedError(ConfigError, LocatedError):
    """A reduced precision (bf16) asked for a model whose argmax agreement with fp32, measured
    at export, is below the threshold or was never measured."""


class MissingDependencyError(ConfigError):
    """An optional Python package that the asked feature needs is not installed."""


class ModelLoadError(ConfigError):
    """The model cannot be loaded in a worker process: no scan can be processed."""


class ShardError(ConfigError):
    """A shard specification (``--shard`` or the scheduler's variables) is invalid."""


class PipelineError(ConfigError):
    """A pipeline cannot run as written (missing input, unmet need, unknown stage)."""


class MetricOptionError(ConfigError):
    """A metric's parameters are invalid (a spacing or a tolerance)."""


class PhantomError(ConfigError):
    """Invalid phantom parameters (orientation code, spacing, shape)."""


class DicomWriteError(ConfigError):
    """A volume cannot be written as the requested DICOM series."""

    def __init__(self, target: object, problem: str) -> None:
        self.target = str(target)
        self.problem = problem
        super().__init__(f"{self.target}: {problem}")

    def __reduce__(self) -> tuple:  # picklable across worker processes
        return (type(self), (self.target, self.problem))


# --- services ----------------------------------------------------------------------------------


class TrackingError(ServiceError):
    """A run, model package or registry operation cannot be done as asked."""


class TrackingUnavailableError(ServiceError, LocatedError):
    """The tracking store cannot be reached or written: ``"<uri>: <problem>"``."""


class PacsError(ServiceError):
    """Talking to a PACS failed; the message names the PACS and what went wrong."""


class PacsUnavailableError(PacsError):
    """The PACS cannot be reached or answered with a server error: worth retrying later."""


class PacsSetupError(PacsError):
    """The PACS file does not work: TLS verification or credentials failed (not retried)."""


class PacsRefusedError(PacsError):
    """The PACS answered but refused an object or a request (e.g. a STOW-RS failure)."""


class SecretError(PacsError):
    """A credential the PACS file names is missing, empty or not private."""


# --- per-case failures -------------------------------------------------------------------------


class WorkerDiedError(CaseFailure):
    """The worker process running an item ended abruptly, also when the item ran alone."""


class SegmentationLabelError(CaseFailure):
    """The label map or its names cannot become SEG segments."""


class VolumeReportError(CaseFailure):
    """The SEG or the volumes cannot become a report (names do not match, bad values...)."""


class OverlayCaptureError(CaseFailure):
    """The SEG and source images cannot make the overlay picture (wrong series, no frames...)."""
