"""Post-processing of label maps: keep the largest connected component of chosen structures."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage


def keep_largest_component(labels: np.ndarray, structures: Iterable[int]) -> np.ndarray:
    """Copy of ``labels`` where each listed structure keeps only its largest 26-connected part.

    Removed voxels become background. Work is confined to each structure's bounding box.
    """
    result = labels.copy()
    connectivity = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
    for value in structures:
        mask = labels == value
        if not mask.any():
            continue
        box = ndimage.find_objects(mask.astype(np.uint8))[0]
        components, count = ndimage.label(mask[box], structure=connectivity)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        region = result[box]
        region[(components != int(np.argmax(sizes))) & (components > 0)] = 0
    return result
