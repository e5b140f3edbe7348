"""Region-based labels (nnU-Net v2's ``regions``): overlapping structures, each a set of labels.

A dataset.json declares a region as a label whose value is a list, and the label value each
region paints when a prediction is turned back into a label map::

    "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
               "enhancing tumor": 3},
    "regions_class_order": [1, 2, 3]

A label given as one value is the region of that value alone. Networks then have one sigmoid
output per region (no background channel), trained on the region masks (``isin`` of the label
map) and scored per region. A prediction is a set of region masks (sigmoid > 0.5) painted into
a label map in ``regions_class_order``: later regions overwrite earlier ones, so nested regions
are listed from the outside in.

The region's name names the value it paints (``{1: "whole tumor", 2: "tumor core", ...}``),
so everything keyed by label value (Dice per structure, post-processing, reports) names the
region.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeGuard

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from medseg.errors import RegionsError

SIGMOID_THRESHOLD = 0.5
"""A voxel is in a region when the region's sigmoid probability is above this."""


class Region(BaseModel):
    """A named set of label values trained and scored as one structure."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    labels: list[int]


class RegionSet(BaseModel):
    """The regions of a dataset with the label value each one paints, in painting order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    regions: list[Region]
    regions_class_order: list[int]

    def label_names(self) -> dict[int, str]:
        """Label value -> name: 0 is background, each painted value named after its region."""
        painted = zip(self.regions_class_order, self.regions, strict=True)
        return {0: "background"} | {value: region.name for value, region in painted}


def is_region_declaration(labels: Mapping[str, object]) -> bool:
    """True when a dataset.json ``labels`` mapping gives some label as a list of values."""
    return any(isinstance(value, list) for value in labels.values())


def parse_regions(
    labels: Mapping[str, object], regions_class_order: object, *, where: object
) -> RegionSet:
    """The regions of nnU-Net v2 style ``labels`` (``{"name": value or [values]}``).

    Background (value 0) and the ignore label are no region; every other entry is one.

    Raises:
        RegionsError: ``regions_class_order`` is missing, not one positive distinct value per
            region, or a region holds a value no region paints or that is not an integer;
            the message starts with ``where`` (the file).
    """
    regions = []
    for name, value in labels.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(_is_label(v) for v in values):
            raise RegionsError(
                f"{where}: label {name!r}: {value!r} is not a label value >= 0 or a non-empty "
                "list of them"
            )
        if values == [0] or name.strip().lower() == "ignore":  # manifest.IGNORE_LABEL_NAME
            continue
        regions.append(Region(name=name, labels=sorted({v for v in values if _is_label(v)})))
    if regions_class_order is None:
        raise RegionsError(
            f"{where}: labels given as lists declare regions, which need "
            f"'regions_class_order' (the label value each of the {len(regions)} regions paints)"
        )
    if not isinstance(regions_class_order, list) or not all(
        _is_label(v) and v > 0 for v in regions_class_order
    ):
        raise RegionsError(
            f"{where}: 'regions_class_order' must be a list of label values > 0, "
            f"got {regions_class_order!r}"
        )
    if len(regions_class_order) != len(regions):
        raise RegionsError(
            f"{where}: 'regions_class_order' has {len(regions_class_order)} entries for "
            f"{len(regions)} regions ({', '.join(r.name for r in regions)}); give one per region"
        )
    if len(set(regions_class_order)) != len(regions_class_order):
        raise RegionsError(f"{where}: 'regions_class_order' repeats a value: {regions_class_order}")
    painted = set(regions_class_order)
    for region in regions:
        unknown = sorted(set(region.labels) - painted)
        if unknown:
            raise RegionsError(
                f"{where}: region {region.name!r} holds label values {unknown} that no region "
                f"paints (regions_class_order: {regions_class_order})"
            )
    return RegionSet(regions=regions, regions_class_order=list(regions_class_order))


def _is_label(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def region_masks(label_map: torch.Tensor, regions: Sequence[Region]) -> torch.Tensor:
    """Float masks ``(B, R, *spatial)`` of an integer label map ``(B, *spatial)``: 1 where the
    label is one of the region's values."""
    masks = [
        torch.isin(label_map, torch.tensor(region.labels, device=label_map.device))
        for region in regions
    ]
    return torch.stack(masks, dim=1).float()


def paint_regions(probabilities: np.ndarray, regions_class_order: Sequence[int]) -> np.ndarray:
    """Label map of region probabilities ``(R, *spatial)``: each region above
    :data:`SIGMOID_THRESHOLD` paints its value, in order (later regions overwrite)."""
    dtype = np.uint8 if max(regions_class_order) < 256 else np.uint16
    labels = np.zeros(probabilities.shape[1:], dtype)
    for probability, value in zip(probabilities, regions_class_order, strict=True):
        labels[np.asarray(probability) > SIGMOID_THRESHOLD] = value
    return labels


def region_confusion(
    predicted: np.ndarray,
    reference: np.ndarray,
    regions: RegionSet,
    *,
    ignore_label: int | None = None,
) -> np.ndarray:
    """Per-region overlap counts laid out so the confusion-matrix formulas give region scores.

    ``predicted`` holds boolean region masks ``(R, *spatial)`` (or a painted label map, whose
    region masks are taken like the reference's); ``reference`` is a label map. The K x K
    matrix (K = highest painted value + 1) holds, for the region painting value ``v``, its true
    positives at ``[v, v]``, false positives at ``[0, v]`` and false negatives at ``[v, 0]``, so
    :func:`medseg.evaluate.metrics.dice_from_confusion` and ``iou_from_confusion`` give the
    region's Dice and IoU at index ``v`` and matrices of several cases add up. It is not a
    confusion matrix of one label map (regions overlap); row 0 only collects the counts.
    Reference voxels of ``ignore_label`` count nowhere.
    """
    reference = np.asarray(reference)
    if predicted.shape == reference.shape:
        predicted = _masks(predicted, regions)
    annotated = (
        np.ones(reference.shape, bool) if ignore_label is None else reference != ignore_label
    )
    truth = _masks(reference, regions)
    size = max(regions.regions_class_order) + 1
    matrix = np.zeros((size, size), np.int64)
    for index, value in enumerate(regions.regions_class_order):
        mine, theirs = predicted[index] & annotated, truth[index] & annotated
        matrix[value, value] += np.count_nonzero(mine & theirs)
        matrix[0, value] += np.count_nonzero(mine & ~theirs)
        matrix[value, 0] += np.count_nonzero(~mine & theirs)
    return matrix


def _masks(label_map: np.ndarray, regions: RegionSet) -> np.ndarray:
    return np.stack([np.isin(label_map, region.labels) for region in regions.regions])
