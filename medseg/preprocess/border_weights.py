"""U-Net border-weight maps (Ronneberger et al. 2015, eq. 2) for label maps on anisotropic grids.

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 * sigma^2))

Definitions used here (the paper leaves them open for multi-label 3D data):

* **Structure**: a face-connected component of the voxels of one label value > 0. Two
  components of the same label that touch only along an edge or a corner are two structures, and
  so are touching components of *different* labels (the paper separates touching cells; a label
  change is such a separation).
* **d1, d2**: Euclidean distance in millimetres (``spacing_mm`` per axis) from a voxel's centre to
  the nearest voxel centre of the nearest and of the second-nearest structure. Between two
  one-voxel objects three voxels apart, the middle voxel has ``d1 = d2 = 2`` voxels. With fewer
  than two structures ``d2`` is infinite and the border term is 0.
* **sigma**: given in voxels it is converted with the *finest* spacing,
  ``sigma_mm = sigma_voxels * min(spacing_mm)``, so on a 0.8 x 0.8 x 5 mm CT the band is as wide in
  plane as on the isotropic images the defaults were tuned on, and thick slices do not inflate it.
  ``sigma_mm`` can be given instead.
* **w_c**: class-frequency balancing, ``N / (n_classes * N_c)`` normalised so background is 1,
  i.e. ``w_c(c) = N_background / N_c``; without background voxels the most frequent class is 1.
* **Which voxels get the border term**: background voxels only, by default. The paper introduces
  the weight "to force the network to learn the small separation borders that we introduce
  between touching cells", and those borders are background. For a foreground voxel d1 is 0 (its
  own structure), so the literal formula would weight whole cells of a cluster by their distance
  to the neighbour cell; ``border_term_on_foreground=True`` gives that literal reading.

Cost: one distance transform per structure, but only inside the structure's bounding box grown
by the distance beyond which the term is below ``_NEGLIGIBLE_TERM``; the two smallest distances
per voxel are kept with a running update. The result equals the full computation to within
``_NEGLIGIBLE_TERM`` (absolute, in weight units).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medseg.errors import BorderWeightError

logger = logging.getLogger(__name__)

# Border terms smaller than this (absolute weight) are dropped; it bounds the error of the
# bounding-box computation against a full one.
_NEGLIGIBLE_TERM = 1e-6


def label_structures(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Number the structures of a label map: face-connected components of each label value > 0.

    Touching components of different labels are different structures.

    Args:
        labels: integer or boolean label map of any dimension; 0 is background.

    Returns:
        ``(structure_ids, n_structures)``: an int32 array of the shape of ``labels`` with 0 on
        background and ``1..n_structures`` on the structures, and the number of structures.

    Raises:
        BorderWeightError: if ``labels`` is not an integer/boolean array or has negative values.
    """
    labels = _validated_labels(labels)
    structure_ids = np.zeros(labels.shape, dtype=np.int32)
    if labels.ndim == 0 or labels.size == 0:
        return structure_ids, 0
    values, compact = np.unique(labels, return_inverse=True)
    compact = compact.reshape(labels.shape)
    if values[0] != 0:
        compact += 1  # keep 0 for background so find_objects numbers the classes from 1
    connectivity = ndimage.generate_binary_structure(labels.ndim, 1)
    n_structures = 0
    for class_index, class_box in enumerate(ndimage.find_objects(compact), start=1):
        if class_box is None:  # index 0 unused when there is no background
            continue
        components, n_components = ndimage.label(
            compact[class_box] == class_index, structure=connectivity
        )
        inside = components > 0
        structure_ids[class_box][inside] = components[inside] + n_structures
        n_structures += n_components
    return structure_ids, n_structures


def class_balance_map(labels: np.ndarray) -> np.ndarray:
    """Class-frequency weights ``w_c``: ``N_background / N_c`` per voxel of class ``c`` (float32).

    This is ``N / (n_classes * N_c)`` normalised so background gets 1. Without background
    voxels the most frequent class gets 1.

    Args:
        labels: integer or boolean label map; 0 is background.

    Returns:
        float32 array of the shape of ``labels``.

    Raises:
        BorderWeightError: if ``labels`` is not an integer/boolean array or has negative values.
    """
    labels = _validated_labels(labels)
    if labels.size == 0:
        return np.zeros(labels.shape, dtype=np.float32)
    values, compact, counts = np.unique(labels, return_inverse=True, return_counts=True)
    reference = counts[0] if values[0] == 0 else counts.max()
    class_weights = (reference / counts).astype(np.float32)
    return class_weights[compact.reshape(labels.shape)]


def border_weight_map(
    labels: np.ndarray,
    *,
    spacing_mm: Sequence[float],
    w0: float = 10.0,
    sigma_voxels: float = 5.0,
    sigma_mm: float | None = None,
    class_balance: bool = True,
    max_structures: int | None = None,
    border_term_on_foreground: bool = False,
) -> np.ndarray:
    """U-Net weight map ``w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` (Ronneberger 2015, eq. 2).

    See the module docstring for the definitions of structure, d1/d2, sigma units and w_c.
    Background voxels far from every structure get ``w_c(background)`` (1 with class balancing);
    voxels near fewer than two structures get no border term (d2 is infinite). Foreground voxels
    get ``w_c`` only unless ``border_term_on_foreground`` is set.

    Example:
        >>> strip = np.array([[0, 1, 0, 0, 0, 1, 0]])
        >>> w = border_weight_map(strip, spacing_mm=(1.0, 1.0))
        >>> round(float(w[0, 3]), 4)  # d1 = d2 = 2: 1 + 10 * exp(-16 / 50)
        8.2615

    Args:
        labels: integer or boolean label map (2D, 3D or any dimension), indexed like
            ``Volume.array``; 0 is background, every value > 0 a class.
        spacing_mm: voxel size along each axis of ``labels`` in millimetres.
        w0: amplitude of the border term.
        sigma_voxels: width of the border term in voxels of the finest spacing.
        sigma_mm: width of the border term in millimetres; overrides ``sigma_voxels``.
        class_balance: add the class-frequency map ``w_c``; otherwise ``w_c`` is 1 everywhere.
        max_structures: refuse label maps with more structures than this (a guard against
            noisy maps whose cost grows with the number of structures); ``None`` for no limit.
        border_term_on_foreground: also add the border term on foreground voxels, where d1 is 0.

    Returns:
        float32 array of the shape of ``labels``.

    Raises:
        BorderWeightError: on a non-integer or negative label map, a spacing that does not match
            its dimensions or is not positive, a negative ``w0``, a non-positive sigma, or more
            structures than ``max_structures``.
    """
    labels = _validated_labels(labels)
    if labels.ndim == 0 or labels.size == 0:
        raise BorderWeightError(f"labels: need a non-empty array, got shape {labels.shape}")
    spacing = _validated_spacing(spacing_mm, labels.ndim)
    if not (math.isfinite(w0) and w0 >= 0):
        raise BorderWeightError(f"w0: must be finite and >= 0, got {w0}")
    if sigma_mm is None:
        if not (math.isfinite(sigma_voxels) and sigma_voxels > 0):
            raise BorderWeightError(f"sigma_voxels: must be finite and > 0, got {sigma_voxels}")
        sigma_mm = sigma_voxels * float(spacing.min())
    elif not (math.isfinite(sigma_mm) and sigma_mm > 0):
        raise BorderWeightError(f"sigma_mm: must be finite and > 0, got {sigma_mm}")

    if class_balance:
        weights = class_balance_map(labels)
    else:
        weights = np.ones(labels.shape, dtype=np.float32)

    structure_ids, n_structures = label_structures(labels)
    if max_structures is not None and n_structures > max_structures:
        raise BorderWeightError(
            f"labels: {n_structures} structures, more than max_structures={max_structures}"
        )
    logger.debug("border weights: %d structures, sigma %.3g mm", n_structures, sigma_mm)
    if n_structures < 2 or w0 <= _NEGLIGIBLE_TERM:
        return weights

    # The term is below _NEGLIGIBLE_TERM once d1 + d2 > cutoff; distances beyond it need not be
    # exact, so each structure's distance transform is confined to its box grown by the cutoff.
    cutoff_mm = sigma_mm * math.sqrt(2.0 * math.log(w0 / _NEGLIGIBLE_TERM))
    nearest, second = _two_nearest_distances(structure_ids, spacing, cutoff_mm)
    target = np.ones(labels.shape, dtype=bool) if border_term_on_foreground else labels == 0
    separation = nearest[target] + second[target]
    weights[target] += (w0 * np.exp(-(separation**2) / (2.0 * sigma_mm**2))).astype(np.float32)
    return weights


def _two_nearest_distances(
    structure_ids: np.ndarray, spacing: np.ndarray, cutoff_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per voxel, the distances to the nearest and second-nearest structure.

    Exact wherever the distance is at most ``cutoff_mm``; elsewhere at least the true distance
    (possibly infinite).
    """
    nearest = np.full(structure_ids.shape, np.inf)
    second = np.full(structure_ids.shape, np.inf)
    margin = np.ceil(cutoff_mm / spacing).astype(int)
    for structure_id, box in enumerate(ndimage.find_objects(structure_ids), start=1):
        grown = tuple(
            slice(max(axis.start - m, 0), min(axis.stop + m, n))
            for axis, m, n in zip(box, margin, structure_ids.shape, strict=True)
        )
        # The grown box holds the whole structure, so the in-box transform is the exact
        # distance to it; every voxel within cutoff_mm of the structure lies in the box.
        distance = ndimage.distance_transform_edt(
            structure_ids[grown] != structure_id, sampling=spacing
        )
        box_nearest = nearest[grown]
        second[grown] = np.minimum(second[grown], np.maximum(box_nearest, distance))
        nearest[grown] = np.minimum(box_nearest, distance)
    return nearest, second


def _validated_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise BorderWeightError(f"labels: need an integer or boolean array, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise BorderWeightError(f"labels: negative label {labels.min()}; 0 is background")
    return labels


def _validated_spacing(spacing_mm: Sequence[float], ndim: int) -> np.ndarray:
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if spacing.shape != (ndim,):
        raise BorderWeightError(
            f"spacing_mm: need {ndim} values for a {ndim}D label map, got {list(spacing_mm)}"
        )
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
        raise BorderWeightError(f"spacing_mm: need finite values > 0, got {spacing.tolist()}")
    return spacing
