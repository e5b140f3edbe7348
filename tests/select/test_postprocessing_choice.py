"""Post-processing is decided per structure, only where it raises the summed Dice, and the
rules a model carries do exactly what they say."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.infer.postprocess import PostprocessingRules, StructureRule, apply_rules
from medseg.select.postprocessing import (
    StructureTrial,
    decide,
    smallest_components_mm3,
    variants_for,
)


def _blocks(shape: tuple[int, int, int], *boxes: tuple[int, slice, slice, slice]) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    for value, *box in boxes:
        labels[tuple(box)] = value
    return labels


ORGAN = (1, slice(2, 6), slice(2, 6), slice(2, 6))  # 64 voxels
STRAY = (1, slice(10, 11), slice(10, 11), slice(10, 11))  # 1 voxel, far away
SECOND_PART = (2, slice(12, 14), slice(2, 4), slice(2, 4))  # 8 voxels: a real second part
FIRST_PART = (2, slice(2, 6), slice(10, 14), slice(10, 14))  # 64 voxels


def test_the_smallest_component_is_learned_in_mm3() -> None:
    reference = _blocks((16, 16, 16), ORGAN, FIRST_PART, SECOND_PART)
    assert smallest_components_mm3([reference], [1, 2, 3], voxel_mm3=2.0) == {1: 128.0, 2: 16.0}


def test_a_stray_blob_is_removed_and_a_real_second_part_is_kept() -> None:
    reference = _blocks((16, 16, 16), ORGAN, FIRST_PART, SECOND_PART)
    prediction = _blocks((16, 16, 16), ORGAN, STRAY, FIRST_PART, SECOND_PART)
    smallest = smallest_components_mm3([reference], [1, 2], voxel_mm3=1.0)
    trials = [StructureTrial(value, variants_for(smallest[value])) for value in (1, 2)]
    for trial in trials:
        trial.add(prediction, reference, voxel_mm3=1.0)
    rules, decisions = decide(trials)
    organ, parts = decisions
    # organ: 64 true, 1 false positive -> 128/129 before; every variant removes the stray voxel
    assert organ.dice_before == pytest.approx(128 / 129)
    assert organ.dice_after == 1.0
    assert organ.chosen.label.startswith("remove < 0.25 x smallest (16.0 mm³)")  # the mildest
    # the structure of two parts: keeping the largest would lose the 8-voxel part
    assert parts.dice["keep largest"] == pytest.approx(2 * 64 / (64 + 72))
    assert parts.chosen.label == "none" and parts.dice_after == 1.0
    assert rules == PostprocessingRules(structures={1: StructureRule(min_component_mm3=16.0)})


def test_keep_largest_is_chosen_when_only_it_helps() -> None:
    reference = _blocks((16, 16, 16), ORGAN)
    big_stray = (1, slice(10, 14), slice(10, 14), slice(10, 14))  # as big as the organ
    prediction = _blocks((16, 16, 16), ORGAN, big_stray)
    prediction[2:6, 2:6, 6] = 1  # the organ's part grows: it is the largest component
    trial = StructureTrial(1, variants_for(64.0))
    trial.add(prediction, reference, voxel_mm3=1.0)
    _, [decision] = decide([trial])
    assert decision.chosen.label == "keep largest"
    assert decision.dice_after == pytest.approx(2 * 64 / (64 + 80))


def test_rules_apply_in_mm3_on_the_scan_grid() -> None:
    labels = _blocks((16, 16, 16), ORGAN, STRAY, FIRST_PART, SECOND_PART)
    rules = PostprocessingRules(
        structures={1: StructureRule(keep_largest=True), 2: StructureRule(min_component_mm3=20.0)}
    )
    # at 2 mm³ per voxel the 8-voxel part (16 mm³) is under 20 mm³, the 64-voxel one is not
    result = apply_rules(labels, rules, voxel_mm3=2.0)
    assert np.array_equal(result, _blocks((16, 16, 16), ORGAN, FIRST_PART))
    # at 4 mm³ per voxel it is 32 mm³: kept
    assert np.array_equal(
        apply_rules(labels, rules, voxel_mm3=4.0),
        _blocks((16, 16, 16), ORGAN, FIRST_PART, SECOND_PART),
    )
