"""Cross-validation: train the folds, keep their out-of-fold probabilities, log the CV Dice.

A cross-validation folder (``--run-dir``) holds one configuration (one training config with
one plan) trained on every fold of ``splits.json`` (``medseg.train.folds``)::

    cross_validation.json      what is trained here (config, plan, folds digests; MLflow run)
    fold_K/checkpoints/        the fold's training (last.pt, best.pt), as ``medseg train``
    fold_K/oof/CASE.npy        out-of-fold probabilities (K, X, Y, Z) float16 (with regions: one
                               sigmoid per region, R instead of K), at the network's
                               resolution (the preprocessed grid of the cache)
    fold_K/fold.json           written last: the fold is finished (its run, confusion matrix)
    summary.json               per-structure CV Dice over all folds' out-of-fold predictions

Folds run in sequence and each is resumable: a finished fold (``fold.json``) is skipped, a
killed one continues from its ``last.pt``. A folder holding another config, plan or split is
refused rather than mixed. In MLflow, ``cross_validate`` opens one parent run (reopened when
resumed) with each fold's training as a child run; the parent gets ``cv_dice_<structure>``,
``cv_mean_dice`` and ``fold_<K>_mean_dice``. The CV Dice comes from one confusion matrix
summed over every out-of-fold case, like the validation Dice of a training.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from medseg.config_io import load_json_model
from medseg.errors import ConfigError
from medseg.evaluate.metrics import dice_from_confusion, mean_foreground
from medseg.io.atomic import atomic_path, write_json_atomic
from medseg.models import build_network
from medseg.preprocess.cache import load_cache
from medseg.preprocess.plan import Plan
from medseg.progress import ProgressCallback
from medseg.train.config import TrainConfig
from medseg.train.folds import Fold
from medseg.train.loop import CaseSplit, config_for_plan, train
from medseg.train.validation import predict_case_probabilities, scored_prediction

logger = logging.getLogger(__name__)

RUN_RECORD = "cross_validation.json"
FOLD_RECORD = "fold.json"
SUMMARY = "summary.json"
OUT_OF_FOLD = "oof"
# options that change how a training runs, not what it learns: they may differ on resume
_RUNTIME_OPTIONS = {"experiment", "registered_model_name", "num_workers", "threads"}


class CrossValidationRecord(BaseModel):
    """``cross_validation.json``: what a cross-validation folder holds."""

    model_config = ConfigDict(extra="forbid")

    configuration: str
    architecture: str
    config_sha256: str
    plan_sha256: str
    folds_sha256: str
    folds: int
    run_id: str | None = None


class FoldRecord(BaseModel):
    """``fold_K/fold.json``: a finished fold."""

    model_config = ConfigDict(extra="forbid")

    fold: int
    run_id: str | None
    stopped_by: str
    val: list[str]
    confusion: list[list[int]]
    per_case_mean_dice: dict[str, float]

    @property
    def mean_dice(self) -> float:
        """Mean foreground Dice of the fold's out-of-fold predictions."""
        return mean_foreground(dice_from_confusion(np.asarray(self.confusion)))


@dataclass(frozen=True)
class CrossValidationResult:
    """Every fold's record and the CV Dice over all of them."""

    run_dir: Path
    folds: list[FoldRecord]
    dice: dict[str, float]  # structure name -> Dice over every out-of-fold case
    mean_dice: float
    run_id: str | None = None
    trained: tuple[int, ...] = ()  # folds trained by this call (the others were finished)


def _refuse_int8(config: TrainConfig) -> None:
    """Folds are not quantized: their ensemble runs at fp32 or bf16."""
    if config.int8:
        raise ConfigError(
            "int8: the folds' ensemble (medseg ensemble) runs at fp32 or bf16; quantize a "
            "model trained alone (medseg train --int8)"
        )


def fold_folder(run_dir: Path, fold: int) -> Path:
    """``run_dir/fold_K``: the training folder of fold ``K``."""
    return Path(run_dir) / f"fold_{fold}"


def out_of_fold_path(run_dir: Path, fold: int, case_id: str) -> Path:
    """Where fold ``fold`` keeps the out-of-fold probabilities of ``case_id``."""
    return fold_folder(run_dir, fold) / OUT_OF_FOLD / f"{case_id}.npy"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def claim_folder(
    run_dir: Path, *, config: TrainConfig, plan: Plan, folds: list[Fold]
) -> CrossValidationRecord:
    """Write ``cross_validation.json`` in a new folder, or check that it describes this
    config, plan and split.

    Raises:
        ConfigError: the folder holds a cross-validation of another config, plan or split.
    """
    path = Path(run_dir) / RUN_RECORD
    wanted = CrossValidationRecord(
        configuration=config.configuration,
        architecture=config.architecture,
        config_sha256=_digest(config.model_dump_json(exclude=_RUNTIME_OPTIONS)),
        plan_sha256=plan.digest(),
        folds_sha256=_digest("".join(f.model_dump_json() for f in folds)),
        folds=len(folds),
    )
    if not path.exists():
        write_json_atomic(path, wanted.model_dump(mode="json"))
        return wanted
    held = load_json_model(path, CrossValidationRecord)
    for key, what in (
        ("config_sha256", "training config"),
        ("plan_sha256", "plan"),
        ("folds_sha256", "folds (splits.json)"),
    ):
        if getattr(held, key) != getattr(wanted, key):
            raise ConfigError(
                f"{path.parent}: holds a cross-validation with another {what}; continue it "
                "with the same one, or give another --run-dir"
            )
    return held


def train_fold(
    fold: int,
    *,
    folds: list[Fold],
    manifest_path: Path,
    plan: Plan,
    cache_dir: Path,
    config: TrainConfig,
    run_dir: Path,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
    on_progress: ProgressCallback | None = None,
) -> tuple[FoldRecord | None, bool]:
    """Train fold ``fold`` in ``run_dir/fold_K`` unless it is finished; keep its out-of-fold
    probabilities. Returns the fold's record and whether it was trained now; under torchrun
    every rank trains, rank 0 alone predicts the held-out cases and returns the record (the
    others return None).

    The fold's model is not registered (``registered_model_name`` is ignored): the folds
    become one model as an ensemble.

    Raises:
        ConfigError: no such fold, or ``run_dir`` holds another cross-validation.
    """
    if not 0 <= fold < len(folds):
        raise ConfigError(f"--fold: {fold} is not a fold of 0..{len(folds) - 1}")
    _refuse_int8(config)
    claim_folder(run_dir, config=config, plan=plan, folds=folds)
    folder = fold_folder(run_dir, fold)
    record_path = folder / FOLD_RECORD
    if record_path.exists():
        logger.info("fold %d finished earlier (%s): skipped", fold, record_path)
        return load_json_model(record_path, FoldRecord), False
    result = train(
        manifest_path=manifest_path,
        plan=plan,
        cache_dir=cache_dir,
        config=config.model_copy(update={"registered_model_name": None}),
        run_dir=folder,
        resume=(folder / "checkpoints" / "last.pt").exists(),
        tracking_uri=tracking_uri,
        parent_run_id=parent_run_id,
        on_progress=on_progress,
        split=CaseSplit(train=folds[fold].train, val=folds[fold].val),
        fold=fold,
    )
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun rank 0 predicts and records
        return None, True
    confusion, per_case = write_out_of_fold(
        result.best_checkpoint,
        cases=folds[fold].val,
        cache_dir=cache_dir,
        plan=plan,
        config=config,
        out_dir=folder / OUT_OF_FOLD,
    )
    record = FoldRecord(
        fold=fold,
        run_id=result.run_id,
        stopped_by=result.stopped_by,
        val=folds[fold].val,
        confusion=confusion.tolist(),
        per_case_mean_dice=per_case,
    )
    write_json_atomic(record_path, record.model_dump(mode="json"))
    logger.info("fold %d: out-of-fold mean Dice %.4f", fold, record.mean_dice)
    return record, True


def write_out_of_fold(
    checkpoint: Path,
    *,
    cases: list[str],
    cache_dir: Path,
    plan: Plan,
    config: TrainConfig,
    out_dir: Path,
) -> tuple[np.ndarray, dict[str, float]]:
    """Predict the held-out ``cases`` with the checkpoint's network (sliding window as in
    validation), store their probabilities as float16 ``out_dir/CASE.npy``; return the summed
    confusion matrix of the stored probabilities and each case's mean foreground Dice."""
    payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    network = build_network(**payload["extra"]["network_arguments"])
    network.load_state_dict(payload["network"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network = network.to(device).eval()
    configuration = plan.configurations[config.configuration]
    size = max(plan.label_names) + 1  # of the confusion matrix (regions: see region_confusion)
    total = np.zeros((size, size), np.int64)
    per_case: dict[str, float] = {}
    for case in load_cache(cache_dir, cases):
        assert case.label is not None  # cross-validation cases are labelled
        with torch.inference_mode():
            probabilities = predict_case_probabilities(
                network,
                case.image,
                patch_size=configuration.patch_size,
                num_classes=plan.num_outputs,
                device=device,
                overlap=config.validation.overlap,
                mirror=config.validation.mirror,
                mirror_axes=config.augmentation.mirror_axes,
                slice_axis=configuration.slice_axis,
                activation=plan.activation,
            ).cpu()
        stored = probabilities.numpy().astype(np.float16)
        with atomic_path(out_dir / f"{case.case_id}.npy") as tmp, open(tmp, "wb") as file:
            np.save(file, stored)
        # scored as stored, so the CV Dice is what the kept probabilities give
        _, matrix = scored_prediction(
            stored,
            np.asarray(case.label),
            num_classes=size,
            ignore_label=plan.ignore_label,
            regions=plan.region_set,
        )
        total += matrix
        per_case[case.case_id] = mean_foreground(dice_from_confusion(matrix))
    return total, per_case


def summarize(records: list[FoldRecord], label_names: dict[int, str]) -> dict[str, float]:
    """Per-structure Dice (by name) from the confusion matrices of every fold, summed."""
    total = sum(np.asarray(record.confusion, np.int64) for record in records)
    dice = dice_from_confusion(np.asarray(total))
    return {label_names[label]: float(dice[label]) for label in sorted(label_names) if label}


def cross_validate(
    *,
    folds: list[Fold],
    manifest_path: Path,
    plan: Plan,
    cache_dir: Path,
    config: TrainConfig,
    run_dir: Path,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
    on_progress: ProgressCallback | None = None,
) -> CrossValidationResult:
    """Train every fold in sequence (finished folds skipped, a killed one resumed) under one
    MLflow parent run, then log and store the CV Dice (see the module doc).

    ``parent_run_id`` nests the parent run under that run (a pipeline's).

    Raises:
        ConfigError: ``run_dir`` holds another cross-validation.
    """
    from medseg.tracking.runs import RunTracker
    from medseg.tracking.stale import mark_stale_runs

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "cross-validate trains its folds one after the other in one process; under "
            "torchrun, train each fold with medseg train --fold K"
        )
    _refuse_int8(config)
    run_dir = Path(run_dir)
    config = config_for_plan(config, plan)
    claimed = claim_folder(run_dir, config=config, plan=plan, folds=folds)
    mark_stale_runs(run_dir, tracking_uri)
    tracker = RunTracker(tracking_uri=tracking_uri, home=run_dir, role="cross-validation")
    tracker.start(
        experiment=config.experiment,
        run_name=f"cv-{config.configuration}-{config.architecture}",
        tags={"medseg.stage": "cross_validate"},
        run_id=claimed.run_id,
        parent_run_id=parent_run_id if claimed.run_id is None else None,
        nested=claimed.run_id is not None and parent_run_id is not None,
    )
    if claimed.run_id is None:
        claimed.run_id = tracker.run_id
        write_json_atomic(run_dir / RUN_RECORD, claimed.model_dump(mode="json"))
        tracker.log_params(
            {
                "folds": len(folds),
                "configuration": config.configuration,
                "architecture": config.architecture,
                "config": config.model_dump(mode="json"),
            }
        )
        tracker.log_dict([fold.model_dump() for fold in folds], "cross_validation/splits.json")
    try:
        records, trained = [], []
        for fold in range(len(folds)):
            record, now = train_fold(
                fold,
                folds=folds,
                manifest_path=manifest_path,
                plan=plan,
                cache_dir=cache_dir,
                config=config,
                run_dir=run_dir,
                tracking_uri=tracking_uri,
                parent_run_id=tracker.run_id,
                on_progress=on_progress,
            )
            assert record is not None  # one process: it is rank 0
            records.append(record)
            trained += [fold] if now else []
            tracker.log_metrics({f"fold_{fold}_mean_dice": record.mean_dice}, step=0)
        dice = summarize(records, plan.label_names)
        mean = float(np.nanmean(list(dice.values()))) if dice else float("nan")
        summary = {
            "configuration": config.configuration,
            "architecture": config.architecture,
            "cv_dice": dice,
            "cv_mean_dice": mean,
            "folds": [
                {"fold": r.fold, "mean_dice": r.mean_dice, "run_id": r.run_id} for r in records
            ],
        }
        write_json_atomic(run_dir / SUMMARY, summary)
        tracker.log_metrics(
            {"cv_mean_dice": mean, **{f"cv_dice_{name}": value for name, value in dice.items()}},
            step=0,
        )
        tracker.log_dict(summary, "cross_validation/summary.json")
    except BaseException:
        tracker.end(failed=True)
        raise
    tracker.end()
    return CrossValidationResult(
        run_dir=run_dir,
        folds=records,
        dice=dice,
        mean_dice=mean,
        run_id=tracker.run_id,
        trained=tuple(trained),
    )
