"""Validation: sliding-window prediction on cached validation cases, Dice per structure.

With regions (``medseg.regions``) a structure is a region: sigmoid > 0.5 against the region's
mask, its Dice keyed by the label value it paints (see ``region_confusion``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medseg.evaluate.metrics import confusion_matrix, dice_from_confusion, mean_foreground
from medseg.infer.sliding_window import predict_probabilities
from medseg.overlays import save_overlay
from medseg.preprocess.cache import LoadedCase
from medseg.regions import RegionSet, paint_regions, region_confusion


@dataclass
class ValidationResult:
    """Dice per structure over the validation cases (from one summed confusion matrix)."""

    dice: dict[int, float]
    mean_dice: float
    per_case: dict[str, float] = field(default_factory=dict)
    pictures: list[Path] = field(default_factory=list)


def predict_case_probabilities(
    network: nn.Module,
    image: np.ndarray,
    *,
    patch_size: list[int],
    num_classes: int,
    device: torch.device,
    overlap: float,
    mirror: bool,
    slice_axis: int | None,
    mirror_axes: Sequence[int] | None = None,
    activation: str = "softmax",
) -> torch.Tensor:
    """Class probabilities ``(K, X, Y, Z)`` (softmax; region probabilities with ``activation=
    "sigmoid"``) of one preprocessed image ``(C, X, Y, Z)`` (3D, or 2D slice by slice), on
    ``device``."""
    tensor = torch.from_numpy(np.array(image, dtype=np.float32)).to(device)  # memmaps: read-only
    return predict_probabilities(
        network,
        tensor,
        patch_size=patch_size,
        num_classes=num_classes,
        overlap=overlap,
        mirror=mirror,
        mirror_axes=mirror_axes,
        slice_axis=slice_axis,
        activation=activation,
    )


def scored_prediction(
    probabilities: np.ndarray,
    label: np.ndarray,
    *,
    num_classes: int,
    ignore_label: int | None,
    regions: RegionSet | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The label map of probabilities ``(K, ...)`` and its confusion matrix against ``label``:
    the argmax, or with ``regions`` the painted regions and their region confusion (sigmoid >
    0.5 per region)."""
    if regions is None:
        prediction = probabilities.argmax(0).astype(np.uint8)
        return prediction, confusion_matrix(
            prediction, label, num_classes, ignore_label=ignore_label
        )
    thresholded = probabilities > 0.5
    matrix = region_confusion(thresholded, label, regions, ignore_label=ignore_label)
    return paint_regions(probabilities, regions.regions_class_order), matrix


def validate(
    network: nn.Module,
    cases: list[LoadedCase],
    *,
    patch_size: list[int],
    num_classes: int,
    device: torch.device,
    overlap: float = 0.5,
    mirror: bool = False,
    mirror_axes: Sequence[int] | None = None,
    slice_axis: int | None = None,
    pictures_dir: Path | None = None,
    pictures: int = 0,
    ignore_label: int | None = None,
    regions: RegionSet | None = None,
) -> ValidationResult:
    """Predict every case, accumulate one confusion matrix, report Dice per structure.

    Reference voxels of ``ignore_label`` (unannotated) count in no confusion matrix. With
    ``regions`` the network has one sigmoid output per region (``num_classes`` of them) and
    the Dice is per region, keyed by the value it paints.
    """
    was_training = network.training
    network.eval()
    size = num_classes if regions is None else max(regions.regions_class_order) + 1
    total = np.zeros((size, size), np.int64)
    per_case: dict[str, float] = {}
    written: list[Path] = []
    for number, case in enumerate(cases):
        assert case.label is not None
        probabilities = predict_case_probabilities(
            network,
            case.image,
            patch_size=patch_size,
            num_classes=num_classes,
            device=device,
            overlap=overlap,
            mirror=mirror,
            mirror_axes=mirror_axes,
            slice_axis=slice_axis,
            activation="softmax" if regions is None else "sigmoid",
        )
        prediction, matrix = scored_prediction(
            probabilities.cpu().numpy(),
            np.asarray(case.label),
            num_classes=num_classes,
            ignore_label=ignore_label,
            regions=regions,
        )
        total += matrix
        per_case[case.case_id] = mean_foreground(dice_from_confusion(matrix))
        if pictures_dir is not None and number < pictures:
            written.append(
                save_overlay(
                    pictures_dir / f"{case.case_id}.png",
                    image=np.asarray(case.image[0]),
                    panels={"reference": np.asarray(case.label), "prediction": prediction},
                    title=case.case_id,
                )
            )
    network.train(was_training)
    dice = dice_from_confusion(total)
    return ValidationResult(
        dice={label: float(dice[label]) for label in range(1, size)},
        mean_dice=mean_foreground(dice),
        per_case=per_case,
        pictures=written,
    )
