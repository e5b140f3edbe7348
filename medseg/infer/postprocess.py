"""Post-processing of label maps: keep the largest connected component of chosen structures,
remove components under a size, and the per-structure rules a model carries
(``medseg select`` decides them on out-of-fold predictions)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
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


class StructureRule(BaseModel):
    """What post-processing does to one structure of a label map."""

    model_config = ConfigDict(extra="forbid")

    keep_largest: bool = False  # keep only its largest 26-connected component
    min_component_mm3: float | None = Field(None, gt=0)  # remove smaller components

    @property
    def changes_anything(self) -> bool:
        """Whether the rule does anything."""
        return self.keep_largest or self.min_component_mm3 is not None


class PostprocessingRules(BaseModel):
    """Per-structure rules, as ``medseg select`` decides them and a model carries them
    (``postprocessing.json``). Structures not listed are left alone."""

    model_config = ConfigDict(extra="forbid")

    structures: dict[int, StructureRule] = Field(default_factory=dict)

    def active(self) -> dict[int, StructureRule]:
        """The rules that change something, by structure value."""
        return {value: rule for value, rule in self.structures.items() if rule.changes_anything}


def remove_small_components(labels: np.ndarray, structure: int, *, min_voxels: float) -> np.ndarray:
    """Copy of ``labels`` where the 26-connected components of ``structure`` with fewer than
    ``min_voxels`` voxels become background."""
    result = labels.copy()
    mask = labels == structure
    if not mask.any():
        return result
    connectivity = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    components, _ = ndimage.label(mask[box], structure=connectivity)
    sizes = np.bincount(components.ravel())
    small = sizes < min_voxels
    small[0] = False
    result[box][small[components]] = 0
    return result


def apply_rules(labels: np.ndarray, rules: PostprocessingRules, *, voxel_mm3: float) -> np.ndarray:
    """``labels`` with every active rule applied (sizes in mm³ through ``voxel_mm3``)."""
    active = rules.active()
    result = keep_largest_component(
        labels, [value for value, rule in active.items() if rule.keep_largest]
    )
    for value, rule in active.items():
        if rule.min_component_mm3 is not None and not rule.keep_largest:
            result = remove_small_components(
                result, value, min_voxels=rule.min_component_mm3 / voxel_mm3
            )
    return result
