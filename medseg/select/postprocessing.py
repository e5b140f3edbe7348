"""Decide post-processing per structure on out-of-fold predictions: a rule is kept only where
it raises that structure's CV Dice.

Tried for every foreground structure, each on its own (the others unchanged):

- keep only the largest connected component (nnU-Net's post-processing);
- remove components smaller than a size learned from the training labels: the smallest
  component of the structure found in any training label, and a quarter and a half of it
  (a real part is never that small; a stray false positive often is).

Each variant is scored like the CV Dice, with true/false positives and false negatives summed
over every case. The variant with the highest Dice is chosen when it beats doing nothing;
on a tie the mildest wins (smaller size threshold first, keeping the largest last).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from medseg.infer.postprocess import (
    PostprocessingRules,
    StructureRule,
    keep_largest_component,
    remove_small_components,
)

SIZE_FRACTIONS = (0.25, 0.5, 1.0)  # of the smallest component in the training labels


def smallest_components_mm3(
    references: Iterable[np.ndarray], structures: list[int], *, voxel_mm3: float
) -> dict[int, float]:
    """The volume of each structure's smallest 26-connected component over ``references``
    (structures never present are left out)."""
    smallest: dict[int, float] = {}
    for reference in references:
        connectivity = ndimage.generate_binary_structure(reference.ndim, reference.ndim)
        for value in structures:
            mask = np.asarray(reference) == value
            if not mask.any():
                continue
            components, _ = ndimage.label(mask, structure=connectivity)
            sizes = np.bincount(components.ravel())[1:]
            volume = float(sizes.min()) * voxel_mm3
            smallest[value] = min(smallest.get(value, volume), volume)
    return smallest


@dataclass(frozen=True)
class Variant:
    """One way to post-process one structure."""

    label: str
    rule: StructureRule


def variants_for(structure_smallest_mm3: float | None) -> list[Variant]:
    """Doing nothing, then the size thresholds (mildest first), then keeping the largest."""
    variants = [Variant("none", StructureRule())]
    if structure_smallest_mm3 is not None:
        variants += [
            Variant(
                f"remove < {fraction:g} x smallest ({fraction * structure_smallest_mm3:.1f} mm³)",
                StructureRule(min_component_mm3=fraction * structure_smallest_mm3),
            )
            for fraction in SIZE_FRACTIONS
        ]
    return [*variants, Variant("keep largest", StructureRule(keep_largest=True))]


@dataclass
class StructureTrial:
    """Every variant's summed overlap counts for one structure."""

    value: int
    variants: list[Variant]
    counts: np.ndarray = field(init=False)  # (variant, [true pos, false pos, false neg])

    def __post_init__(self) -> None:
        self.counts = np.zeros((len(self.variants), 3), np.int64)

    def add(self, prediction: np.ndarray, reference: np.ndarray, *, voxel_mm3: float) -> None:
        """Score every variant on one case."""
        truth = reference == self.value
        for index, variant in enumerate(self.variants):
            mask = _apply(prediction, self.value, variant.rule, voxel_mm3) == self.value
            true_positive = int(np.count_nonzero(mask & truth))
            self.counts[index] += (
                true_positive,
                int(np.count_nonzero(mask)) - true_positive,
                int(np.count_nonzero(truth)) - true_positive,
            )

    def dice(self) -> np.ndarray:
        """Dice of each variant (NaN when the structure is absent on both sides)."""
        true_positive, false_positive, false_negative = self.counts.T.astype(np.float64)
        denominator = 2 * true_positive + false_positive + false_negative
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denominator > 0, 2 * true_positive / denominator, np.nan)

    def chosen(self) -> int:
        """Index of the chosen variant: the best, if it beats doing nothing (index 0)."""
        dice = np.nan_to_num(self.dice(), nan=-1.0)
        best = int(np.argmax(dice))  # the first of equals: the mildest
        return best if dice[best] > dice[0] else 0


def _apply(prediction: np.ndarray, value: int, rule: StructureRule, voxel_mm3: float) -> np.ndarray:
    if rule.keep_largest:
        return keep_largest_component(prediction, [value])
    if rule.min_component_mm3 is not None:
        return remove_small_components(
            prediction, value, min_voxels=rule.min_component_mm3 / voxel_mm3
        )
    return prediction


@dataclass(frozen=True)
class Decision:
    """The outcome for one structure: every variant's Dice and the one chosen."""

    value: int
    dice: dict[str, float]  # variant label -> CV Dice with it
    chosen: Variant

    @property
    def dice_before(self) -> float:
        return self.dice["none"]

    @property
    def dice_after(self) -> float:
        return self.dice[self.chosen.label]


def decide(trials: list[StructureTrial]) -> tuple[PostprocessingRules, list[Decision]]:
    """The rules (only structures whose Dice a variant raised) and the decision table."""
    decisions = []
    for trial in trials:
        dice = trial.dice()
        chosen = trial.variants[trial.chosen()]
        decisions.append(
            Decision(
                trial.value,
                {v.label: float(d) for v, d in zip(trial.variants, dice, strict=True)},
                chosen,
            )
        )
    rules = PostprocessingRules(
        structures={d.value: d.chosen.rule for d in decisions if d.chosen.rule.changes_anything}
    )
    return rules, decisions
