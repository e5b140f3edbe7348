"""Training-time sampling of 3D patches and 2D slices with foreground oversampling.

Choosing and applying are separate steps (the TorchIO lesson): :func:`choose_patch` draws the
random parameters of one patch from a ``np.random.Generator`` and returns a :class:`PatchPlan`;
:func:`extract_patch` applies a plan deterministically. :class:`BatchSampler` chains both over
a list of cases, seeded, so the same seed always yields the same batches.

Geometry (axes as in :mod:`medseg.volume`): images are ``(C, X, Y, Z)``, labels and weights
``(X, Y, Z)``. A 3D patch of size ``(px, py, pz)`` covers ``X, Y, Z``. A 2D patch of size
``(a, b)`` with ``slice_axis=s`` is one slice perpendicular to spatial axis ``s``; ``a`` and
``b`` cover the two other spatial axes in increasing order, so ``slice_axis=2`` gives
``(C, X, Y)`` patches, ``slice_axis=0`` gives ``(C, Y, Z)`` patches. Internally a 2D patch is
a 3D window one voxel thick along ``slice_axis``.

Placement:

* Random draws: the start corner is uniform, independently per axis, over every valid start:
  ``0 .. dim - size`` when the volume is at least as large as the patch, else
  ``dim - size .. 0`` (the whole volume lies somewhere inside the padded patch).
* Foreground draws (nnU-Net style): a foreground class is picked uniformly among the classes
  present in the case (non-empty ``class_locations``), then one voxel uniformly among that
  class's locations; the patch is placed with that voxel at a uniformly random offset inside
  it, then the start is clamped to the valid range above. Clamping never pushes the voxel out.
  A case without foreground falls back to a random draw, flagged by ``PatchPlan.fell_back``.

Padding: windows reaching outside the volume are padded with :data:`IMAGE_PAD_VALUE` (0, the
mean intensity after z-score normalization), :data:`LABEL_PAD_VALUE` (0, background) and
:data:`WEIGHTS_PAD_VALUE` (1, the neutral border weight).

Batches: the last :func:`forced_foreground_count` samples of every batch are foreground draws;
see that function for the rule.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import EllipsisType
from typing import TYPE_CHECKING

import numpy as np

from medseg.errors import (
    GeometryMismatchError,
    InvalidSampleSourceError,
    MissingLabelsError,
    SamplingConfigError,
)

if TYPE_CHECKING:
    from medseg.preprocess.cache import LoadedCase

logger = logging.getLogger(__name__)

IMAGE_PAD_VALUE = 0.0
"""Image value outside the volume: 0, the mean after z-score normalization."""
LABEL_PAD_VALUE = 0
"""Label value outside the volume: background."""
WEIGHTS_PAD_VALUE = 1.0
"""Border-weight value outside the volume: neutral weight."""

Triple = tuple[int, int, int]


@dataclass(eq=False)
class SampleSource:
    """One preprocessed case as the sampler reads it; arrays may be ``np.memmap``.

    Args:
        case_id: identifier of the case, carried into every sample drawn from it.
        image: float array ``(C, X, Y, Z)``.
        label: integer array ``(X, Y, Z)``.
        class_locations: for each foreground label value, an ``(N, 3)`` integer array of voxel
            coordinates of that label (N may be 0). Key 0 (background) is ignored.
        weights: optional float array ``(X, Y, Z)`` (border-weight map).

    Raises:
        GeometryMismatchError: image, label and weights do not share the spatial shape.
        InvalidSampleSourceError: wrong number of dimensions, or locations that are not
            ``(N, 3)`` or lie outside the volume.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    class_locations: Mapping[int, np.ndarray]
    weights: np.ndarray | None = None
    foreground_classes: tuple[int, ...] = field(init=False)
    """Sorted foreground label values that have at least one location in this case."""

    def __post_init__(self) -> None:
        if self.image.ndim != 4:
            raise InvalidSampleSourceError(
                f"case {self.case_id}: image must be (C, X, Y, Z), got shape {self.image.shape}"
            )
        if self.label.ndim != 3:
            raise InvalidSampleSourceError(
                f"case {self.case_id}: label must be (X, Y, Z), got shape {self.label.shape}"
            )
        if self.label.shape != self.image.shape[1:]:
            raise GeometryMismatchError(
                f"case {self.case_id}: label shape {self.label.shape} differs from image "
                f"spatial shape {self.image.shape[1:]}"
            )
        if self.weights is not None and self.weights.shape != self.label.shape:
            raise GeometryMismatchError(
                f"case {self.case_id}: weights shape {self.weights.shape} differs from label "
                f"shape {self.label.shape}"
            )
        present = []
        for value, locations in self.class_locations.items():
            if locations.ndim != 2 or locations.shape[1] != 3:
                raise InvalidSampleSourceError(
                    f"case {self.case_id}: class_locations[{value}] must be (N, 3), "
                    f"got shape {locations.shape}"
                )
            if int(value) == 0 or len(locations) == 0:
                continue
            if np.any(locations < 0) or np.any(locations >= np.asarray(self.shape)):
                raise InvalidSampleSourceError(
                    f"case {self.case_id}: class_locations[{value}] has coordinates outside "
                    f"the volume of shape {self.shape}"
                )
            present.append(int(value))
        self.foreground_classes = tuple(sorted(present))

    @classmethod
    def from_cached_case(cls, case: LoadedCase) -> SampleSource:
        """A case of the preprocessing cache as the sampler reads it (needs a label).

        Raises:
            MissingLabelsError: the case has no label.
        """
        if case.label is None:
            raise MissingLabelsError(
                f"{case.case_id}: an unlabelled case cannot be sampled for training"
            )
        return cls(
            case_id=case.case_id,
            image=case.image,
            label=case.label,
            class_locations=case.class_locations,
            weights=case.weights,
        )

    @property
    def shape(self) -> Triple:
        """Spatial shape ``(X, Y, Z)``."""
        x, y, z = self.label.shape
        return (int(x), int(y), int(z))


@dataclass(frozen=True)
class PatchPlan:
    """The random parameters of one patch; :func:`extract_patch` applies it.

    Args:
        case_id: case the patch is drawn from.
        start: spatial start corner ``(x, y, z)``; may be negative or reach past the volume,
            the outside is padded.
        window: spatial extent ``(X, Y, Z)`` read from the volume; 1 along ``slice_axis``.
        slice_axis: spatial axis perpendicular to a 2D slice, or None for a 3D patch.
        foreground_requested: the draw had to contain foreground.
        foreground_class: label value the patch was placed around, None for a random draw.
        foreground_voxel: voxel of ``foreground_class`` the patch was placed around.
    """

    case_id: str
    start: Triple
    window: Triple
    slice_axis: int | None = None
    foreground_requested: bool = False
    foreground_class: int | None = None
    foreground_voxel: Triple | None = None

    @property
    def fell_back(self) -> bool:
        """True when foreground was requested but the case has none, so the draw is random."""
        return self.foreground_requested and self.foreground_class is None

    @property
    def slice_index(self) -> int | None:
        """Index of the 2D slice along ``slice_axis``; None for 3D patches."""
        return None if self.slice_axis is None else self.start[self.slice_axis]

    @property
    def patch_shape(self) -> tuple[int, ...]:
        """Spatial shape of the extracted patch: 3 sizes for 3D, 2 for 2D."""
        return tuple(n for axis, n in enumerate(self.window) if axis != self.slice_axis)


@dataclass(eq=False)
class Sample:
    """One extracted patch: image ``(C, ...)`` float32, label ``(...)``, optional weights."""

    image: np.ndarray
    label: np.ndarray
    weights: np.ndarray | None
    plan: PatchPlan


@dataclass(eq=False)
class Batch:
    """A stack of patches.

    Attributes:
        image: float32 ``(B, C, ...)``.
        label: ``(B, ...)`` in the sources' label dtype.
        weights: float32 ``(B, ...)`` when the sources have weights, else None.
        case_ids: case of each sample.
        foreground_forced: bool ``(B,)``, the sample was a foreground draw.
        foreground_fallback: bool ``(B,)``, forced but the case has no foreground.
        plans: the plan of each sample.
    """

    image: np.ndarray
    label: np.ndarray
    weights: np.ndarray | None
    case_ids: tuple[str, ...]
    foreground_forced: np.ndarray
    foreground_fallback: np.ndarray
    plans: tuple[PatchPlan, ...]


def patch_window(patch_size: Sequence[int], slice_axis: int | None = None) -> Triple:
    """Spatial window ``(X, Y, Z)`` of a 3D patch size, or of a 2D size with its slice axis.

    Raises:
        SamplingConfigError: wrong number of sizes for the mode, non-positive size or bad slice
            axis.
    """
    sizes = tuple(int(n) for n in patch_size)
    if slice_axis is None:
        if len(sizes) != 3:
            raise SamplingConfigError(
                f"patch_size must have 3 sizes for 3D patches, got {patch_size}"
            )
    else:
        if slice_axis not in (0, 1, 2):
            raise SamplingConfigError(f"slice_axis must be 0, 1, 2 or None, got {slice_axis}")
        if len(sizes) != 2:
            raise SamplingConfigError(
                f"patch_size must have 2 sizes for 2D slices, got {patch_size}"
            )
        sizes = (*sizes[:slice_axis], 1, *sizes[slice_axis:])
    if min(sizes) < 1:
        raise SamplingConfigError(f"patch_size must be positive, got {patch_size}")
    return _triple(sizes)


def _triple(values: Iterable[int] | np.ndarray) -> Triple:
    """Three Python ints from three numbers (numpy integers included)."""
    x, y, z = (int(v) for v in values)
    return x, y, z


def _start_range(shape: Triple, window: Triple) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest valid start per axis (inclusive)."""
    room = np.asarray(shape) - np.asarray(window)
    return np.minimum(room, 0), np.maximum(room, 0)


def choose_patch(
    source: SampleSource,
    *,
    patch_size: Sequence[int],
    slice_axis: int | None = None,
    force_foreground: bool,
    rng: np.random.Generator,
) -> PatchPlan:
    """Draw where one patch lies in ``source``; the only random step of sampling.

    Args:
        source: the case.
        patch_size: ``(px, py, pz)``, or ``(a, b)`` with ``slice_axis`` for 2D slices.
        slice_axis: spatial axis perpendicular to 2D slices; None for 3D patches.
        force_foreground: place the patch around a foreground voxel (see module docstring).
        rng: source of randomness; the plan depends only on its state and the arguments.

    Returns:
        The plan; ``plan.fell_back`` is True when foreground was forced but the case has none.

    Example:
        >>> plan = choose_patch(source, patch_size=(64, 64, 64), force_foreground=True,
        ...                     rng=np.random.default_rng(0))
        >>> sample = extract_patch(source, plan)
    """
    window = patch_window(patch_size, slice_axis)
    low, high = _start_range(source.shape, window)
    classes = source.foreground_classes
    if force_foreground and classes:
        label_value = classes[int(rng.integers(len(classes)))]
        locations = source.class_locations[label_value]
        voxel = np.asarray(locations[int(rng.integers(len(locations)))], dtype=np.int64)
        offset = rng.integers(0, window)
        start = np.clip(voxel - offset, low, high)
        return PatchPlan(
            case_id=source.case_id,
            start=_triple(start),
            window=window,
            slice_axis=slice_axis,
            foreground_requested=True,
            foreground_class=label_value,
            foreground_voxel=_triple(voxel),
        )
    if force_foreground:
        logger.debug("case %s has no foreground; drawing a random patch", source.case_id)
    start = rng.integers(low, high, endpoint=True)
    return PatchPlan(
        case_id=source.case_id,
        start=_triple(start),
        window=window,
        slice_axis=slice_axis,
        foreground_requested=force_foreground,
    )


def _read_window(
    array: np.ndarray, start: Triple, window: Triple, *, out: np.ndarray, pad_value: float
) -> None:
    """Copy ``array[..., start:start + window]`` into ``out``, padding outside the volume.

    Only the part of the window inside the volume is read, so memmapped volumes are never
    loaded whole.
    """
    source_slices = []
    target_slices = []
    for begin, size, dim in zip(start, window, array.shape[-3:], strict=True):
        lo, hi = max(begin, 0), min(begin + size, dim)
        if hi <= lo:
            out[...] = pad_value
            return
        source_slices.append(slice(lo, hi))
        target_slices.append(slice(lo - begin, hi - begin))
    inside: tuple[EllipsisType | slice, ...] = (Ellipsis, *target_slices)
    if out[inside].shape != out.shape:
        out[...] = pad_value
    source: tuple[EllipsisType | slice, ...] = (Ellipsis, *source_slices)
    out[inside] = array[source]


def _read_plan(
    source: SampleSource,
    plan: PatchPlan,
    *,
    image: np.ndarray,
    label: np.ndarray,
    weights: np.ndarray | None,
) -> None:
    """Write the 3D window of ``plan`` into the given output arrays (weights when not None)."""
    _read_window(source.image, plan.start, plan.window, out=image, pad_value=IMAGE_PAD_VALUE)
    _read_window(source.label, plan.start, plan.window, out=label, pad_value=LABEL_PAD_VALUE)
    if weights is not None and source.weights is not None:
        _read_window(
            source.weights, plan.start, plan.window, out=weights, pad_value=WEIGHTS_PAD_VALUE
        )


def extract_patch(source: SampleSource, plan: PatchPlan) -> Sample:
    """Cut the patch described by ``plan`` out of ``source``; deterministic.

    Returns:
        A :class:`Sample` with fresh (non-memmap, writable) arrays: image float32 ``(C, ...)``,
        label ``(...)`` in the label dtype, weights float32 ``(...)`` or None, where ``...`` is
        ``plan.patch_shape``. Outside the volume the documented pad values are used.

    Raises:
        InvalidSampleSourceError: ``plan`` was made for another case.
    """
    if plan.case_id != source.case_id:
        raise InvalidSampleSourceError(f"plan is for case {plan.case_id}, not {source.case_id}")
    image = np.empty((source.image.shape[0], *plan.window), dtype=np.float32)
    label = np.empty(plan.window, dtype=source.label.dtype)
    weights = None if source.weights is None else np.empty(plan.window, dtype=np.float32)
    _read_plan(source, plan, image=image, label=label, weights=weights)
    spatial = tuple(plan.patch_shape)
    return Sample(
        image=image.reshape(image.shape[0], *spatial),
        label=label.reshape(spatial),
        weights=None if weights is None else weights.reshape(spatial),
        plan=plan,
    )


def forced_foreground_count(batch_size: int, foreground_fraction: float) -> int:
    """Number of foreground-forced samples in a batch: ``ceil(batch_size * fraction)``.

    nnU-Net forces the last ``B - round(B * (1 - 0.33))`` samples, which is 0 for ``B = 1``;
    rounding up instead guarantees at least the configured fraction in every batch (so
    ``B = 1`` with ``f = 1/3`` forces its one sample). The forced share is therefore
    ``ceil(B * f) / B >= f``, e.g. 1 of 2 for ``B = 2, f = 1/3`` and 4 of 12 for ``B = 12``.
    The forced samples are the last ones of the batch, as in nnU-Net.

    Raises:
        SamplingConfigError: ``foreground_fraction`` outside ``[0, 1]``.
    """
    if not 0.0 <= foreground_fraction <= 1.0:
        raise SamplingConfigError(
            f"foreground_fraction must be in [0, 1], got {foreground_fraction}"
        )
    exact = batch_size * foreground_fraction
    # Snap float noise to the integer (10 * 0.7 is 7.000000000000001, which must give 7, not 8).
    count = round(exact) if abs(exact - round(exact)) < 1e-9 else math.ceil(exact)
    return min(batch_size, count)


class BatchSampler:
    """Endless, seeded stream of patch batches with foreground oversampling.

    Each batch draws ``batch_size`` cases uniformly with replacement; the last
    :func:`forced_foreground_count` samples are foreground draws, the others random draws.
    All plans of a batch are chosen before any array is read. One ``np.random.Generator``
    seeded with ``seed`` drives everything, so the same seed and sources give the same batches.
    For several data-loader workers, give each worker its own seed.

    Args:
        sources: the cases; all with the same number of channels, and either all or none with
            weights.
        patch_size: ``(px, py, pz)``, or ``(a, b)`` with ``slice_axis`` for 2D slices.
        batch_size: samples per batch.
        foreground_fraction: minimum share of foreground-forced samples per batch.
        slice_axis: spatial axis perpendicular to 2D slices; None for 3D patches.
        seed: seed of the generator.

    Raises:
        InvalidSampleSourceError: empty sources, mixed channels or weights, or duplicate case
            ids.
        SamplingConfigError: bad sizes, batch size or fraction.

    Example:
        >>> sampler = BatchSampler(sources, patch_size=(96, 96, 96), batch_size=2, seed=0)
        >>> batch = sampler.next_batch()  # batch.image: (2, C, 96, 96, 96)
    """

    def __init__(
        self,
        sources: Sequence[SampleSource],
        *,
        patch_size: Sequence[int],
        batch_size: int,
        foreground_fraction: float = 1 / 3,
        slice_axis: int | None = None,
        seed: int,
    ) -> None:
        if not sources:
            raise InvalidSampleSourceError("sources must hold at least one case")
        if batch_size < 1:
            raise SamplingConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.window = patch_window(patch_size, slice_axis)
        self.patch_size = tuple(int(n) for n in patch_size)
        self.slice_axis = slice_axis
        self.batch_size = batch_size
        self.foreground_fraction = foreground_fraction
        self.n_forced = forced_foreground_count(batch_size, foreground_fraction)
        self.sources = tuple(sources)
        channels = {s.image.shape[0] for s in self.sources}
        if len(channels) != 1:
            raise InvalidSampleSourceError(
                f"sources have different channel counts {sorted(channels)}"
            )
        self.channels = channels.pop()
        without_weights = [s.case_id for s in self.sources if s.weights is None]
        if without_weights and len(without_weights) != len(self.sources):
            raise InvalidSampleSourceError(
                f"either all or no sources must have weights; without: {without_weights[:5]}"
            )
        self.has_weights = not without_weights
        self.label_dtype = np.result_type(*(s.label.dtype for s in self.sources))
        self._by_id = {s.case_id: s for s in self.sources}
        if len(self._by_id) != len(self.sources):
            raise InvalidSampleSourceError("case_id of the sources must be unique")
        self._rng = np.random.default_rng(seed)

    def plan_batch(self) -> tuple[PatchPlan, ...]:
        """Draw the plans of the next batch (advances the generator)."""
        cases = self._rng.integers(len(self.sources), size=self.batch_size)
        first_forced = self.batch_size - self.n_forced
        return tuple(
            choose_patch(
                self.sources[int(case)],
                patch_size=self.patch_size,
                slice_axis=self.slice_axis,
                force_foreground=index >= first_forced,
                rng=self._rng,
            )
            for index, case in enumerate(cases)
        )

    def extract_batch(self, plans: Sequence[PatchPlan]) -> Batch:
        """Read and stack the patches of ``plans``; deterministic."""
        count = len(plans)
        image = np.empty((count, self.channels, *self.window), dtype=np.float32)
        label = np.empty((count, *self.window), dtype=self.label_dtype)
        weights = np.empty((count, *self.window), dtype=np.float32) if self.has_weights else None
        for index, plan in enumerate(plans):
            _read_plan(
                self._by_id[plan.case_id],
                plan,
                image=image[index],
                label=label[index],
                weights=None if weights is None else weights[index],
            )
        spatial = tuple(n for axis, n in enumerate(self.window) if axis != self.slice_axis)
        return Batch(
            image=image.reshape(count, self.channels, *spatial),
            label=label.reshape(count, *spatial),
            weights=None if weights is None else weights.reshape(count, *spatial),
            case_ids=tuple(p.case_id for p in plans),
            foreground_forced=np.array([p.foreground_requested for p in plans], dtype=bool),
            foreground_fallback=np.array([p.fell_back for p in plans], dtype=bool),
            plans=tuple(plans),
        )

    def next_batch(self) -> Batch:
        """Draw and read the next batch."""
        return self.extract_batch(self.plan_batch())

    def __iter__(self) -> Iterator[Batch]:
        """Yield batches forever, continuing the same random stream as :meth:`next_batch`."""
        while True:
            yield self.next_batch()
