"""Choose the best configuration or ensemble, then its post-processing, from cross-validation
folders; write the decision as ``selection.json`` and a readable table ``selection.md``.

A region-based plan (``medseg.regions``) is ranked by the Dice per region; no post-processing
is decided for it (the rules act on label values, which overlapping regions are not).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg import __version__
from medseg.errors import ConfigError
from medseg.infer.postprocess import PostprocessingRules
from medseg.io.atomic import write_json_atomic, write_text_atomic
from medseg.preprocess.cache import load_cache
from medseg.preprocess.plan import Plan
from medseg.select.candidates import (
    Candidate,
    TrainedConfiguration,
    cases_of,
    check_comparable,
    ensemble_argmax,
    iterate_cases,
    load_configuration,
    score_candidates,
)
from medseg.select.postprocessing import (
    Decision,
    StructureTrial,
    decide,
    smallest_components_mm3,
    variants_for,
)

logger = logging.getLogger(__name__)

SELECTION_JSON = "selection.json"
SELECTION_TABLE = "selection.md"


@dataclass(frozen=True)
class Selection:
    """What ``select`` decided, and every number it decided on."""

    configurations: list[TrainedConfiguration]
    candidates: list[Candidate]  # best first
    rules: PostprocessingRules
    decisions: list[Decision]
    label_names: dict[int, str]

    @property
    def best(self) -> Candidate:
        return self.candidates[0]

    @property
    def members(self) -> list[TrainedConfiguration]:
        """The configurations of the chosen candidate."""
        return [c for c in self.configurations if c.name in self.best.members]

    @property
    def postprocessed_mean_dice(self) -> float:
        """The chosen candidate's mean CV Dice with the chosen post-processing (none decided,
        as for regions: its mean CV Dice)."""
        if not self.decisions:
            return self.best.mean_dice
        values = [d.dice_after for d in self.decisions if not math.isnan(d.dice_after)]
        return float(np.mean(values)) if values else math.nan

    def as_json(self) -> dict[str, Any]:
        """Everything decided, for ``selection.json``, MLflow and the registered model."""
        return {
            "medseg_version": __version__,
            "chosen": list(self.best.members),
            "cv_mean_dice": self.best.mean_dice,
            "postprocessed_cv_mean_dice": self.postprocessed_mean_dice,
            "candidates": [
                {
                    "members": list(c.members),
                    "cv_mean_dice": c.mean_dice,
                    "cv_dice": self._by_name(c.dice),
                }
                for c in self.candidates
            ],
            "postprocessing": {
                self.label_names[d.value]: {
                    "value": d.value,
                    "chosen": d.chosen.label,
                    "rule": d.chosen.rule.model_dump(),
                    "cv_dice": d.dice,
                }
                for d in self.decisions
            },
            "rules": self.rules.model_dump(mode="json"),
        }

    def _by_name(self, dice: np.ndarray) -> dict[str, float]:
        return {name: float(dice[v]) for v, name in sorted(self.label_names.items()) if v}

    def table(self) -> str:
        """The decision as Markdown: candidates by CV Dice, then post-processing per structure."""
        names = [self.label_names[v] for v in sorted(self.label_names) if v]
        lines = [
            "| candidate | mean CV Dice | " + " | ".join(names) + " |",
            "| --- | --- | " + " | ".join("---" for _ in names) + " |",
        ]
        for rank, c in enumerate(self.candidates):
            mark = " (chosen)" if rank == 0 else ""
            cells = [f"{value:.4f}" for value in self._by_name(c.dice).values()]
            lines.append(f"| {c.name}{mark} | {c.mean_dice:.4f} | " + " | ".join(cells) + " |")
        lines += ["", "| structure | Dice as predicted | chosen | Dice after | variants |"]
        lines.append("| --- | --- | --- | --- | --- |")
        for d in self.decisions:
            tried = "; ".join(f"{label}: {dice:.4f}" for label, dice in d.dice.items())
            lines.append(
                f"| {self.label_names[d.value]} | {d.dice_before:.4f} | {d.chosen.label} "
                f"| {d.dice_after:.4f} | {tried} |"
            )
        return "\n".join(lines) + "\n"

    def save(self, folder: Path) -> None:
        """``selection.json`` and ``selection.md`` in ``folder``, atomically."""
        write_json_atomic(Path(folder) / SELECTION_JSON, self.as_json())
        write_text_atomic(Path(folder) / SELECTION_TABLE, self.table())


def select(folders: list[Path], *, plan: Plan, cache_dir: Path) -> Selection:
    """Score every configuration in ``folders`` and their ensembles on the out-of-fold
    predictions, pick the best by mean CV Dice, decide its post-processing per structure.

    Raises:
        ConfigError: a folder is not a finished cross-validation, or the folders were trained
            with different plans or folds, or with another plan than ``plan``.
    """
    configurations = [load_configuration(folder) for folder in folders]
    check_comparable(configurations)
    if configurations[0].record.plan_sha256 != plan.digest():
        raise ConfigError(f"{configurations[0].folder}: trained with another plan than --plan")
    num_classes = max(plan.label_names) + 1
    candidates = score_candidates(
        configurations, cache_dir, num_classes=num_classes, regions=plan.region_set
    )
    best = candidates[0]
    if plan.regions is not None:
        # per-structure post-processing acts on label values, which overlapping regions are not
        logger.info("the plan declares regions: no post-processing is decided")
        return Selection(
            configurations, candidates, PostprocessingRules(), [], dict(plan.label_names)
        )
    voxel_mm3 = float(np.prod(plan.target_spacing))
    structures = [value for value in sorted(plan.label_names) if value]
    references = [case.label for case in load_cache(cache_dir, cases_of(configurations))]
    smallest = smallest_components_mm3(
        [r for r in references if r is not None], structures, voxel_mm3=voxel_mm3
    )
    trials = [StructureTrial(value, variants_for(smallest.get(value))) for value in structures]
    chosen = [c for c in configurations if c.name in best.members]  # only their files are read
    for case, probabilities in iterate_cases(chosen, cache_dir):
        assert case.label is not None
        prediction = ensemble_argmax(probabilities, best.members)
        for trial in trials:
            trial.add(prediction, np.asarray(case.label), voxel_mm3=voxel_mm3)
    rules, decisions = decide(trials)
    return Selection(configurations, candidates, rules, decisions, dict(plan.label_names))
