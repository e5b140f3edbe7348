"""One case through the plan, and back: reorient, crop, resample, normalize; then invert.

``preprocess_case`` records in ``CaseProperties`` everything needed to map a prediction on the
preprocessed grid back onto the original scan exactly (``restore_label_map``): the original
affine and shape, the crop box in RAS voxel order, and the resampled grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import torch

from medseg.errors import GeometryMismatchError, ScanChannelsError
from medseg.phi import hash_identifier
from medseg.preprocess.crop_normalize import (
    Normalization,
    as_box,
    channels_first,
    crop,
    nonzero_box,
    normalize_channels,
    uncrop,
)
from medseg.preprocess.plan import Plan
from medseg.preprocess.resample import (
    linear_output_range,
    resample_image,
    resample_labels,
    resample_linear_part,
    resample_nearest,
    resampled_affine,
    resampled_shape,
)
from medseg.regions import paint_regions
from medseg.volume import Volume

CLASS_LOCATION_SAMPLES = 10_000


@dataclass
class CaseProperties:
    """How a case was transformed; JSON-ready."""

    case_id: str
    original_shape: list[int]
    original_affine: list[list[float]]
    ras_shape: list[int]
    ras_affine: list[list[float]]
    crop_box: list[list[int]]
    resampled_shape: list[int]
    resampled_affine: list[list[float]]
    spacing: list[float]
    normalization: dict[str, float] = field(default_factory=dict)  # the first channel's
    channel_normalization: list[dict[str, float]] = field(default_factory=list)
    label_values: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


@dataclass
class PreprocessedCase:
    """Arrays ready for training/inference, plus properties and foreground locations."""

    image: np.ndarray  # (C, X, Y, Z) float32
    label: np.ndarray | None  # (X, Y, Z) uint8/uint16
    properties: CaseProperties
    class_locations: dict[int, np.ndarray]


def preprocess_case(
    image: Volume, label: Volume | None, plan: Plan, *, case_id: str
) -> PreprocessedCase:
    """Apply ``plan`` to one case.

    Image and label may store their axes in different orders; they must cover the same voxel
    grid in world space.

    Raises:
        GeometryMismatchError: image and label are not on the same grid.
        ScanChannelsError: the image has another number of channels than the plan.
    """
    channels = image.shape[3] if image.array.ndim == 4 else 1
    if channels != len(plan.channel_names):
        raise ScanChannelsError(
            case_id,
            f"the scan has {channels} channel(s), the plan has {len(plan.channel_names)} "
            f"({', '.join(plan.channel_names)})",
        )
    ras_image = image.to_closest_ras()
    ras_label = label.to_closest_ras() if label is not None else None
    if ras_label is not None and not ras_label.same_grid(ras_image):
        raise GeometryMismatchError(f"{case_id}: label grid differs from the image grid")
    voxels = channels_first(ras_image.array)
    box = (
        nonzero_box(voxels)
        if plan.crop_to_nonzero
        else as_box([(0, n) for n in ras_image.shape[:3]])
    )
    cropped = crop(voxels, box)
    crop_affine = ras_image.affine_ras.copy()
    crop_affine[:3, 3] = (
        ras_image.affine_ras[:3, :3] @ [lo for lo, _ in box] + ras_image.affine_ras[:3, 3]
    )
    spacing = [float(s) for s in ras_image.spacing_mm]
    new_shape = resampled_shape(cropped.shape[-3:], spacing, plan.target_spacing)
    resampled = resample_image(cropped, new_shape, order=plan.image_resample_order)
    normalized, parameters = normalize_channels(
        resampled, [Normalization(**n.model_dump()) for n in plan.channel_normalization]
    )
    labels = None
    if ras_label is not None:
        labels = resample_labels(crop(ras_label.array, box), new_shape, mode=plan.label_resampling)
        labels = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    affine = resampled_affine(crop_affine, cropped.shape[-3:], new_shape)
    properties = CaseProperties(
        case_id=case_id,
        original_shape=list(image.shape[:3]),
        original_affine=image.affine_ras.tolist(),
        ras_shape=list(ras_image.shape[:3]),
        ras_affine=ras_image.affine_ras.tolist(),
        crop_box=[list(b) for b in box],
        resampled_shape=list(new_shape),
        resampled_affine=affine.tolist(),
        spacing=[float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)],
        normalization=parameters[0],
        channel_normalization=parameters,
        label_values=[int(v) for v in np.unique(labels)] if labels is not None else [],
    )
    return PreprocessedCase(
        image=np.ascontiguousarray(normalized, dtype=np.float32),
        label=labels,
        properties=properties,
        class_locations=class_locations(
            labels, seed=plan.seed, case_id=case_id, ignore_label=plan.ignore_label
        )
        if labels is not None
        else {},
    )


def class_locations(
    labels: np.ndarray, *, seed: int, case_id: str, ignore_label: int | None = None
) -> dict[int, np.ndarray]:
    """Up to ``CLASS_LOCATION_SAMPLES`` voxel coordinates (N, 3) per foreground label value.

    One pass over the volume: foreground voxel indices sorted (stably) by label value, then
    split per value, so coordinates come in C order within each label. ``ignore_label`` is no
    class: it gets no locations, so foreground oversampling never centres a patch on it.
    """
    rng = np.random.default_rng([seed, int(hash_identifier(case_id), 16) % (2**32)])
    flat = labels.ravel()
    classes = flat != 0 if ignore_label is None else (flat != 0) & (flat != ignore_label)
    foreground = np.flatnonzero(classes)
    order = np.argsort(flat[foreground], kind="stable")
    indices = foreground[order]
    starts = np.flatnonzero(np.diff(flat[indices])) + 1
    locations = {}
    for group in np.split(indices, starts) if indices.size else []:
        coordinates = np.column_stack(np.unravel_index(group, labels.shape)).astype(np.int32)
        if len(coordinates) > CLASS_LOCATION_SAMPLES:
            chosen = rng.choice(len(coordinates), CLASS_LOCATION_SAMPLES, replace=False)
            coordinates = coordinates[chosen]
        locations[int(flat[group[0]])] = coordinates
    return locations


def restore_label_map(labels: np.ndarray, properties: CaseProperties) -> Volume:
    """Map a label map on the preprocessed grid back onto the original scan (nearest neighbour).

    Undoes resampling, cropping (outside the crop box is background) and reorientation, so the
    result has the original scan's shape and affine.
    """
    return _onto_original_scan(resample_nearest(labels, _cropped_shape(properties)), properties)


def restore_map(values: np.ndarray, properties: CaseProperties) -> Volume:
    """Map a float map on the preprocessed grid back onto the original scan (linear), 0
    outside the crop box."""
    resampled = resample_image(np.asarray(values, np.float32), _cropped_shape(properties), order=1)
    return _onto_original_scan(resampled, properties)


def _cropped_shape(properties: CaseProperties) -> tuple[int, ...]:
    return tuple(hi - lo for lo, hi in properties.crop_box)


def _shape3(shape: Sequence[int]) -> tuple[int, int, int]:
    x, y, z = shape
    return x, y, z


def _onto_original_scan(cropped: np.ndarray, properties: CaseProperties) -> Volume:
    """Undo cropping (outside is background) and reorientation of a label map."""
    box = as_box(properties.crop_box)
    ras = uncrop(cropped, box, _shape3(properties.ras_shape))
    restored = Volume(ras, np.array(properties.ras_affine))
    return restored.to_orientation_of(np.array(properties.original_affine))


class ClassMapSink(Protocol):
    """Where restored class maps go, one at a time in class order: a list, or a writer that
    streams them to disk (:class:`medseg.io.probabilities.ProbabilityWriter`)."""

    def append(self, channel: np.ndarray, /) -> None: ...


class ClassMaps(Protocol):
    """Per-class (or per-region) maps on the preprocessed grid, read one at a time: an array
    ``(K, *grid)``, or a store that keeps them elsewhere
    (:class:`medseg.infer.probability_store.ClassProbabilities`)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


def restore_argmax(
    probabilities: ClassMaps,
    properties: CaseProperties,
    *,
    keep: ClassMapSink | None = None,
    classes: Sequence[int] | None = None,
) -> Volume:
    """Label map on the original scan of per-class probabilities ``(K, *preprocessed grid)``.

    Each class map is resampled back to the cropped original grid (linear) before the argmax,
    so boundaries are decided at the scan's own resolution; one class at a time (read one at a
    time from ``probabilities``) keeps memory independent of the number of classes. A class
    is resampled only where it can win: the probabilities sum to 1, so the largest is at least
    1/K, and where every voxel a scan voxel is interpolated from holds less than that for a
    class (away from its structure), the class cannot be the argmax there
    (:func:`_where_it_can_win`). The result is the same as resampling every class everywhere,
    in a fraction of the time for many small structures. Outside the crop box is background.
    With ``keep``, each restored class probability map (closest-RAS order, float16, background
    1 outside the crop box) is appended to it in class order as it is made (every class
    resampled everywhere), so no more than one is held.

    With ``classes`` (label values), only they are kept (every other voxel is background) and
    only :func:`where_classes_can_win` is restored: their voxels are the same as without it.

    Raises:
        ValueError: both ``keep`` and ``classes`` (kept probabilities cover every class).
    """
    if keep is not None and classes is not None:
        raise ValueError("restore_argmax keeps the probabilities of every class, or of none")
    cropped_shape = _cropped_shape(properties)
    box = as_box(properties.crop_box)
    ras_shape = _shape3(properties.ras_shape)
    count = len(probabilities)
    best = torch.full(cropped_shape, -1.0)
    labels = torch.zeros(cropped_shape, dtype=torch.uint8 if count <= 256 else torch.int32)
    whole = [(0, n) for n in cropped_shape]
    window = whole if classes is None else where_classes_can_win(probabilities, properties, classes)
    for index in range(count if window is not None else 0):
        channel = np.asarray(probabilities[index], np.float32)
        part = whole if keep is not None else _where_it_can_win(channel, cropped_shape, count)
        part = _intersection(part, window)
        if part is None:
            continue
        if part == whole:
            resampled = resample_image(channel, cropped_shape, order=1)
        else:
            resampled = resample_linear_part(channel, cropped_shape, part)
        region = tuple(slice(first, last) for first, last in part)
        value, held = torch.from_numpy(resampled), best[region]
        better = value > held
        torch.maximum(held, value, out=held)
        labels[region].masked_fill_(better, index)
        if keep is not None:
            fill = 1.0 if index == 0 else 0.0
            keep.append(uncrop(resampled.astype(np.float16), box, ras_shape, fill=fill))
    if classes is not None:
        labels[~torch.isin(labels, torch.tensor(list(classes), dtype=labels.dtype))] = 0
    array = labels.numpy() if count <= 256 else labels.numpy().astype(np.uint16)
    return _onto_original_scan(array, properties)


def where_classes_can_win(
    probabilities: ClassMaps, properties: CaseProperties, classes: Sequence[int]
) -> list[tuple[int, int]] | None:
    """The box of the cropped scan grid (voxel ranges per axis) outside which none of
    ``classes`` can be the argmax of ``restore_argmax``: the bounding box of the scan voxels
    interpolated from a preprocessed voxel where one of them reaches 1/K (the footprint of the
    linear interpolation is the margin); None when none of them reaches it anywhere.

    A bounding box of where they are the argmax at network resolution would be smaller, but a
    class can win between voxels where it does not (two others tie there): this one is exact.
    """
    cropped_shape = _cropped_shape(properties)
    boxes = [
        box
        for value in classes
        if (box := _where_it_can_win(probabilities[value], cropped_shape, len(probabilities)))
    ]
    if not boxes:
        return None
    return [(min(b[axis][0] for b in boxes), max(b[axis][1] for b in boxes)) for axis in range(3)]


def _intersection(
    box: list[tuple[int, int]] | None, window: list[tuple[int, int]] | None
) -> list[tuple[int, int]] | None:
    """The voxel ranges both boxes cover; None when they do not overlap (or one is None)."""
    if box is None or window is None:
        return None
    common = [(max(a, c), min(b, d)) for (a, b), (c, d) in zip(box, window, strict=True)]
    return common if all(first < last for first, last in common) else None


def _where_it_can_win(
    channel: np.ndarray, cropped_shape: Sequence[int], classes: int
) -> list[tuple[int, int]] | None:
    """The scan voxel ranges (per axis) interpolated from a voxel where ``channel`` reaches
    1/``classes`` (less 1%, for float16 accumulation), the smallest share the largest of
    ``classes`` probabilities can have; None when it reaches it nowhere."""
    reaches = channel >= 0.99 / classes
    ranges = []
    for axis in range(3):
        present = np.flatnonzero(reaches.any(axis=tuple(a for a in range(3) if a != axis)))
        if present.size == 0:
            return None
        old, new = channel.shape[axis], cropped_shape[axis]
        ranges.append(linear_output_range(old, new, int(present[0]), int(present[-1]) + 1))
    return ranges


def restore_regions(
    probabilities: ClassMaps,
    properties: CaseProperties,
    *,
    regions_class_order: Sequence[int],
    keep: ClassMapSink | None = None,
) -> Volume:
    """Label map on the original scan of sigmoid region probabilities ``(R, *preprocessed
    grid)``: each region's probability is resampled (linear) onto the cropped original grid,
    thresholded at 0.5 there and painted in ``regions_class_order`` (later regions overwrite),
    so region boundaries are decided at the scan's resolution as :func:`restore_argmax` does.
    Outside the crop box no region is present. With ``keep``, each restored region probability
    map (closest-RAS order, float16, 0 outside the crop box) is appended to it in order."""
    cropped_shape = _cropped_shape(properties)
    box = as_box(properties.crop_box)
    restored = np.stack(
        [
            resample_image(np.asarray(probabilities[index]), cropped_shape, order=1)
            for index in range(len(probabilities))
        ]
    )
    if keep is not None:
        ras_shape = _shape3(properties.ras_shape)
        for channel in restored:
            keep.append(uncrop(channel.astype(np.float16), box, ras_shape, fill=0.0))
    return _onto_original_scan(paint_regions(restored, regions_class_order), properties)
