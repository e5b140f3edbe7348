"""Cross-validation folds: a deterministic split of the training cases, stored with the plan.

``splits.json`` beside the plan has nnU-Net's ``splits_final.json`` layout (a list with one
``{"train": [...], "val": [...]}`` per fold), so either tool can read the other's. Every
labelled case of the manifest takes part except those marked ``test``, which stay unseen until
the final evaluation. Cases are ordered by SHA-256 of ``"<seed>:<case_id>"`` (independent of
file order and library versions) and dealt to the folds in turn, so fold sizes differ by at
most one and the same cases and seed always give the same folds.

A ``splits.json`` that no longer fits (another number of folds, cases added to or removed from
the manifest, a test case in a fold) is refused rather than silently re-split: folds already
trained would otherwise have seen their new validation cases.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from medseg.errors import ConfigError
from medseg.io.atomic import write_json_atomic
from medseg.manifest import Split, read_manifest

SPLITS_FILE = "splits.json"
DEFAULT_FOLDS = 5


class Fold(BaseModel):
    """The training and validation case ids of one fold."""

    model_config = ConfigDict(extra="forbid")

    train: list[str]
    val: list[str]


_FOLDS = TypeAdapter(list[Fold])


def cross_validation_cases(manifest_path: Path) -> list[str]:
    """Labelled case ids of the manifest that are not marked ``test``, sorted."""
    records = read_manifest(manifest_path)
    return sorted(r.case_id for r in records if r.label is not None and r.split != Split.TEST)


def make_folds(case_ids: list[str], *, folds: int, seed: int = 0) -> list[Fold]:
    """Split ``case_ids`` into ``folds`` folds (see the module doc).

    Raises:
        ConfigError: fewer than 2 folds, or fewer cases than folds.
    """
    if folds < 2:
        raise ConfigError(f"--folds: cross-validation needs at least 2 folds, not {folds}")
    if len(case_ids) < folds:
        raise ConfigError(
            f"--folds: {folds} folds need at least {folds} labelled training cases; "
            f"the manifest has {len(case_ids)} (test cases excluded)"
        )
    order = sorted(case_ids, key=lambda c: hashlib.sha256(f"{seed}:{c}".encode()).digest())
    held_out = [sorted(order[k::folds]) for k in range(folds)]
    return [Fold(train=sorted(set(case_ids) - set(val)), val=val) for val in held_out]


def splits_path(plan_path: Path) -> Path:
    """Where the folds of ``plan_path``'s dataset are stored: ``splits.json`` beside it."""
    return Path(plan_path).parent / SPLITS_FILE


def load_or_make_folds(
    plan_path: Path, manifest_path: Path, *, folds: int = DEFAULT_FOLDS, seed: int = 0
) -> list[Fold]:
    """The folds stored beside the plan, made and stored first if there are none.

    Raises:
        ConfigError: the stored ``splits.json`` is unreadable, or does not fit the manifest
            or ``folds`` (names the file and what differs).
    """
    cases = cross_validation_cases(manifest_path)
    path = splits_path(plan_path)
    if not path.exists():
        made = make_folds(cases, folds=folds, seed=seed)
        write_json_atomic(path, [fold.model_dump() for fold in made])
        return made
    stored = read_folds(path)
    if len(stored) != folds:
        raise ConfigError(
            f"{path}: holds {len(stored)} folds, but {folds} were asked for; ask for "
            f"{len(stored)}, or move the file away to split again (trained folds then no "
            "longer match)"
        )
    check_folds(stored, cases, where=path)
    return stored


def read_folds(path: Path) -> list[Fold]:
    """Folds from a ``splits.json`` (medseg's or nnU-Net's ``splits_final.json``).

    Raises:
        ConfigError: the file is unreadable or not a list of train/val folds.
    """
    try:
        return _FOLDS.validate_python(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError) as error:
        problem = " ".join(str(error).split())
        raise ConfigError(f"{path}: not a list of {{train, val}} folds: {problem}") from error


def check_folds(folds: list[Fold], cases: list[str], *, where: Path | str) -> None:
    """Every fold partitions ``cases``, and the validation sets partition them too.

    Raises:
        ConfigError: a case is missing, extra, in two validation sets or in both parts of a
            fold (names up to three case ids).
    """
    expected = set(cases)
    held_out = [case for fold in folds for case in fold.val]
    times_held_out = Counter(held_out)
    problems = {
        "in no fold's validation cases": expected - set(held_out),
        "not a labelled training case of the manifest (a test case, or removed)": (
            set(held_out) - expected
        ),
        "in the validation cases of several folds": {c for c, n in times_held_out.items() if n > 1},
    }
    for k, fold in enumerate(folds):
        problems[f"not partitioned by fold {k}"] = expected ^ (set(fold.train) | set(fold.val))
        problems[f"in both parts of fold {k}"] = set(fold.train) & set(fold.val)
    for problem, found in problems.items():
        if found:
            shown = ", ".join(sorted(found)[:3]) + (" ..." if len(found) > 3 else "")
            raise ConfigError(f"{where}: {len(found)} cases {problem}: {shown}")
