"""How sure the networks were of each structure they found, from the class probabilities on
the networks' own grid (before they go back onto the scan).

Per structure: ``confidence``, the mean of the largest class probability over the voxels the
argmax gives the structure, and ``boundary_confidence``, the same mean over its boundary band
(the voxels within ``BAND_VOXELS`` of its surface, on both sides), where most errors are. Both
lie in [1/K, 1]; a structure the argmax gives no voxel has neither (None). They are the
model's own estimates: calibrated only as far as the model is (``docs/qc.md``).

With ``--uncertainty``, the voxel-wise entropy of the class probabilities, divided by its
largest value ``log K`` (0: one class is certain; 1: all K equally likely), goes onto the scan.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from medseg.preprocess.case import ClassMaps

BAND_VOXELS = 1
"""Half-width of a structure's boundary band, in voxels of the networks' grid."""


def argmax_and_max(maps: ClassMaps) -> tuple[np.ndarray, np.ndarray]:
    """The argmax class (the first one wins a tie, as ``np.argmax``) and the largest
    probability of every voxel, reading one class map at a time."""
    best = np.array(maps[0], np.float32)  # a copy: the maps stay as they were
    winner = np.zeros(best.shape, np.uint16)
    for index in range(1, len(maps)):
        probability = maps[index]
        better = probability > best
        best[better] = probability[better]
        winner[better] = index
    return winner, best


def structure_confidence(
    winner: np.ndarray, best: np.ndarray, structures: Mapping[int, str]
) -> dict[str, dict[str, float | None]]:
    """``confidence`` and ``boundary_confidence`` (see the module) per structure name, from
    :func:`argmax_and_max`'s two arrays; None for a structure with no voxel."""
    boxes = ndimage.find_objects(winner)
    scores: dict[str, dict[str, float | None]] = {}
    for value, name in structures.items():
        box = boxes[value - 1] if 0 < value <= len(boxes) else None
        if box is None:
            scores[name] = {"confidence": None, "boundary_confidence": None}
            continue
        grown = tuple(
            slice(max(0, s.start - BAND_VOXELS - 1), min(n, s.stop + BAND_VOXELS + 1))
            for s, n in zip(box, winner.shape, strict=True)
        )
        mask, probability = winner[grown] == value, best[grown]
        band = ndimage.binary_dilation(mask, iterations=BAND_VOXELS) & ~ndimage.binary_erosion(
            mask, iterations=BAND_VOXELS, border_value=1
        )
        scores[name] = {
            "confidence": round(float(probability[mask].mean()), 6),
            "boundary_confidence": round(float(probability[band].mean()), 6),
        }
    return scores


def normalised_entropy(maps: ClassMaps) -> np.ndarray:
    """Entropy of the class probabilities of every voxel over ``log K``, in [0, 1], reading one
    class map at a time."""
    total: np.ndarray | None = None
    for index in range(len(maps)):
        probability = np.clip(np.asarray(maps[index], np.float32), 1e-12, 1.0)
        term = probability * np.log(probability)
        total = term if total is None else total + term
    assert total is not None
    return np.clip(-total / np.log(max(len(maps), 2)), 0.0, 1.0)
