"""Overlap metrics from one confusion matrix: Dice and IoU for every label in one pass.

A ``bincount`` over ``target * K + prediction`` gives the K x K confusion matrix; every
per-structure Dice and IoU follows from its diagonal and margins. Rule for empty structures:
when a structure is absent from both prediction and reference its Dice/IoU is NaN (undefined,
left out of means); absent from one side only, it is 0. Reference voxels of the ignore label
(unannotated, see :func:`medseg.manifest.ignore_label_value`) are left out of the matrix.
"""

from __future__ import annotations

import numpy as np
import torch

from medseg.errors import GeometryMismatchError


def confusion_matrix(
    prediction: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    num_classes: int,
    *,
    ignore_label: int | None = None,
) -> np.ndarray:
    """K x K counts: rows are reference labels, columns predicted labels.

    Voxels where ``target`` holds ``ignore_label`` are counted nowhere.

    Raises:
        GeometryMismatchError: the two label maps have different numbers of voxels.
    """
    if isinstance(prediction, torch.Tensor):
        prediction = prediction.detach().cpu().numpy()
    if isinstance(target, torch.Tensor):
        target = target.detach().cpu().numpy()
    prediction = np.asarray(prediction, dtype=np.int64).ravel()
    target = np.asarray(target, dtype=np.int64).ravel()
    if prediction.shape != target.shape:
        raise GeometryMismatchError(
            f"prediction has {prediction.size} voxels, reference {target.size}"
        )
    if ignore_label is not None:
        annotated = target != ignore_label
        prediction, target = prediction[annotated], target[annotated]
    counts = np.bincount(target * num_classes + prediction, minlength=num_classes * num_classes)
    return counts[: num_classes * num_classes].reshape(num_classes, num_classes)


def dice_from_confusion(matrix: np.ndarray) -> np.ndarray:
    """Dice per label (index = label value); NaN where the label is absent on both sides."""
    true_positive = np.diag(matrix).astype(np.float64)
    denominator = matrix.sum(axis=0) + matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * true_positive / denominator, np.nan)


def iou_from_confusion(matrix: np.ndarray) -> np.ndarray:
    """Intersection over union per label; NaN where the label is absent on both sides."""
    true_positive = np.diag(matrix).astype(np.float64)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positive / union, np.nan)


def mean_foreground(values: np.ndarray) -> float:
    """Mean over labels 1..K-1, ignoring NaN (undefined) entries; NaN if all are undefined."""
    foreground = np.asarray(values, dtype=np.float64)[1:]
    if foreground.size == 0 or np.all(np.isnan(foreground)):
        return float("nan")
    return float(np.nanmean(foreground))
