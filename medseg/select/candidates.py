"""Trained configurations (cross-validation folders) and their ensembles, scored on the
out-of-fold predictions.

Every candidate is a non-empty set of configurations: one alone, or several whose
out-of-fold probabilities are averaged before the argmax, as their ensemble would predict
(with regions: averaged sigmoids thresholded at 0.5, scored per region).
All of them are scored with one confusion matrix per candidate summed over every case, the
same Dice as ``medseg cross-validate`` reports, so a single configuration scores here exactly
its CV Dice.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.config_io import load_json_model
from medseg.errors import ConfigError
from medseg.evaluate.metrics import confusion_matrix, dice_from_confusion, mean_foreground
from medseg.preprocess.cache import LoadedCase, load_cache
from medseg.regions import SIGMOID_THRESHOLD, RegionSet, region_confusion
from medseg.train.cross_validation import (
    FOLD_RECORD,
    RUN_RECORD,
    CrossValidationRecord,
    FoldRecord,
    fold_folder,
    out_of_fold_path,
)


@dataclass(frozen=True)
class TrainedConfiguration:
    """A finished cross-validation folder: one configuration trained on every fold."""

    name: str
    folder: Path
    record: CrossValidationRecord
    folds: list[FoldRecord]

    def out_of_fold(self, case_id: str) -> np.ndarray:
        """The stored out-of-fold probabilities of ``case_id``, as float32 ``(K, X, Y, Z)``."""
        fold = next(f.fold for f in self.folds if case_id in f.val)
        return np.load(out_of_fold_path(self.folder, fold, case_id)).astype(np.float32)

    def member_uris(self) -> list[str]:
        """The MLflow models of its folds (``runs:/RUN/model``), fold by fold."""
        return [f"runs:/{fold.run_id}/model" for fold in self.folds]


def load_configuration(folder: Path) -> TrainedConfiguration:
    """Read a cross-validation folder whose folds are all finished.

    Raises:
        ConfigError: not a cross-validation folder, or a fold is not finished.
    """
    folder = Path(folder)
    if not (folder / RUN_RECORD).exists():
        raise ConfigError(f"{folder}: not a cross-validation folder (no {RUN_RECORD})")
    record = load_json_model(folder / RUN_RECORD, CrossValidationRecord)
    missing = [
        k for k in range(record.folds) if not (fold_folder(folder, k) / FOLD_RECORD).exists()
    ]
    if missing:
        raise ConfigError(
            f"{folder}: folds {missing} are not finished; run medseg cross-validate on it again"
        )
    folds = [
        load_json_model(fold_folder(folder, k) / FOLD_RECORD, FoldRecord)
        for k in range(record.folds)
    ]
    return TrainedConfiguration(folder.name, folder, record, folds)


def check_comparable(configurations: list[TrainedConfiguration]) -> None:
    """Configurations can be compared and ensembled only on the same plan and folds.

    Raises:
        ConfigError: none given, two with one name, or another plan or split than the first.
    """
    if not configurations:
        raise ConfigError("select: give at least one cross-validation folder")
    names = [c.name for c in configurations]
    if len(set(names)) != len(names):
        raise ConfigError(f"select: the folders' names must differ, not {names}")
    first = configurations[0]
    for other in configurations[1:]:
        for key, what in (("plan_sha256", "plan"), ("folds_sha256", "folds (splits.json)")):
            if getattr(other.record, key) != getattr(first.record, key):
                raise ConfigError(
                    f"{other.folder}: trained with another {what} than {first.folder}: "
                    "only configurations of one plan and one split can be compared"
                )


@dataclass
class Candidate:
    """A configuration or an ensemble of several, with its summed confusion matrix."""

    members: tuple[str, ...]
    confusion: np.ndarray = field(repr=False)

    @property
    def name(self) -> str:
        """``3d`` or ``2d + 3d``."""
        return " + ".join(self.members)

    @property
    def dice(self) -> np.ndarray:
        """Dice per label value (NaN where a label is absent on both sides)."""
        return dice_from_confusion(self.confusion)

    @property
    def mean_dice(self) -> float:
        """Mean foreground Dice: what candidates are ranked by."""
        return mean_foreground(self.dice)


def candidate_members(names: list[str]) -> list[tuple[str, ...]]:
    """Every non-empty set of ``names``: each alone, then the ensembles."""
    return [
        members
        for size in range(1, len(names) + 1)
        for members in itertools.combinations(names, size)
    ]


def cases_of(configurations: list[TrainedConfiguration]) -> list[str]:
    """The case ids every configuration predicted out of fold (the same for all)."""
    return sorted(case for fold in configurations[0].folds for case in fold.val)


def iterate_cases(
    configurations: list[TrainedConfiguration], cache_dir: Path
) -> Iterator[tuple[LoadedCase, dict[str, np.ndarray]]]:
    """Each cached case with every configuration's out-of-fold probabilities."""
    for case in load_cache(cache_dir, cases_of(configurations)):
        yield case, {c.name: c.out_of_fold(case.case_id) for c in configurations}


def ensemble_argmax(probabilities: dict[str, np.ndarray], members: tuple[str, ...]) -> np.ndarray:
    """The label map of the members' averaged probabilities."""
    total = sum(probabilities[name] for name in members)
    return np.asarray(total).argmax(0)


def score_candidates(
    configurations: list[TrainedConfiguration],
    cache_dir: Path,
    *,
    num_classes: int,
    regions: RegionSet | None = None,
) -> list[Candidate]:
    """Every candidate's summed confusion matrix over all out-of-fold cases, best first
    (highest mean Dice; on a tie the one with fewer members). With ``regions`` the stored
    probabilities are sigmoids per region, averaged then thresholded at 0.5, and the matrix is
    the region confusion (Dice per region, as cross-validation scores them)."""
    candidates = [
        Candidate(members, np.zeros((num_classes, num_classes), np.int64))
        for members in candidate_members([c.name for c in configurations])
    ]
    for case, probabilities in iterate_cases(configurations, cache_dir):
        assert case.label is not None  # cross-validation cases are labelled
        for candidate in candidates:
            if regions is None:
                prediction = ensemble_argmax(probabilities, candidate.members)
                candidate.confusion += confusion_matrix(prediction, case.label, num_classes)
                continue
            mean = sum(probabilities[name] for name in candidate.members) / len(candidate.members)
            candidate.confusion += region_confusion(
                np.asarray(mean) > SIGMOID_THRESHOLD, np.asarray(case.label), regions
            )
    return sorted(candidates, key=lambda c: (-np.nan_to_num(c.mean_dice, nan=-1), len(c.members)))
