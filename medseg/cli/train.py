"""``medseg train``: a network from the cache, tracked in MLflow."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from medseg.cli.checks import interval, output_folder
from medseg.cli.options import DATA_ROOT, tracking_uri_option
from medseg.cli.render import console
from medseg.train.folds import DEFAULT_FOLDS

if TYPE_CHECKING:
    from medseg.preprocess.plan import Plan
    from medseg.train.config import TrainConfig
    from medseg.train.loop import TrainResult


MANIFEST = typer.Option(..., "--manifest", "-m", exists=True, dir_okay=False)
PLAN = typer.Option(..., "--plan", "-p", exists=True, dir_okay=False)
CONFIG = typer.Option(
    None, "--config", "-c", exists=True, dir_okay=False, help="configs/train/*.yaml"
)
CACHE = typer.Option(
    None,
    callback=output_folder,
    help="Preprocessing cache (default: 'cache' beside the plan; the low-resolution "
    "configuration's cases in CACHE/3d_lowres; built if missing).",
)
MAX_MINUTES = typer.Option(
    None, callback=interval("(0, inf)"), help="Time budget (overrides the config)."
)
EPOCHS = typer.Option(None, min=1, help="Epochs (overrides the config).")
FOLDS = typer.Option(
    DEFAULT_FOLDS, "--folds", min=2, help="Cross-validation folds (splits.json beside the plan)."
)


@dataclass(frozen=True)
class PreparedTraining:
    settings: TrainConfig
    plan: Plan
    cache_dir: Path


def prepare_training(
    *,
    manifest: Path,
    plan_file: Path,
    config: Path | None,
    cache: Path | None,
    data_root: Path | None,
    tracking_uri: str | None,
    **overrides: object,
) -> PreparedTraining:
    """Check everything before the (long) preprocessing, then build the cache if needed."""
    from medseg.tracking.store import require_tracking_store

    require_tracking_store(tracking_uri)  # seconds, before the imports and the preprocessing
    from medseg.manifest import read_manifest
    from medseg.preprocess.plan import Plan
    from medseg.train.config import check_against_plan, load_train_config

    settings = load_train_config(config, **overrides)
    plan_model = Plan.load(plan_file)
    check_against_plan(settings, plan_model, source=config)
    read_manifest(manifest)
    from medseg.preprocess.stage import configuration_cache_dir, preprocess_configuration

    cache_dir = cache or plan_file.parent / "cache"
    if "RANK" in os.environ:  # under torchrun the cache must exist beforehand
        folder = configuration_cache_dir(cache_dir, plan_model, settings.configuration)
    else:
        folder = preprocess_configuration(
            manifest,
            plan=plan_model,
            configuration=settings.configuration,
            cache_dir=cache_dir,
            data_root=data_root,
        )
    return PreparedTraining(settings, plan_model, folder)


def train(
    manifest: Path = MANIFEST,
    plan_file: Path = PLAN,
    config: Path | None = CONFIG,
    cache: Path | None = CACHE,
    run_dir: Path = typer.Option(
        Path("runs/train"), callback=output_folder, help="Checkpoints, pictures, curves."
    ),
    data_root: Path | None = DATA_ROOT,
    resume: bool = typer.Option(False, "--resume", help="Continue from run-dir's last checkpoint."),
    max_minutes: float | None = MAX_MINUTES,
    epochs: int | None = EPOCHS,
    registered_model_name: str | None = typer.Option(
        None, "--register", help="Register the model under this name (overrides the config)."
    ),
    fold: int | None = typer.Option(
        None,
        "--fold",
        min=0,
        help="Train this cross-validation fold in RUN_DIR/fold_K (a finished fold is skipped, "
        "a killed one continues) and keep its out-of-fold probabilities.",
    ),
    folds: int = FOLDS,
    int8: bool = typer.Option(
        False,
        "--int8",
        help="Also quantize the packaged model to int8 (OpenVINO NNCF, calibrated on training "
        "patches; predict --precision int8 runs it when it agrees with fp32 on >= 99.9%).",
    ),
    tracking_uri: str | None = tracking_uri_option(),
) -> None:
    """Train a 2D/3D network from the cache; everything is tracked in MLflow.

    Runs on CUDA when present (with AMP), else CPU; under torchrun with DistributedDataParallel.
    """
    if fold is not None and registered_model_name:
        raise typer.BadParameter(
            "a fold is not registered alone: see medseg ensemble", param_hint="--register"
        )
    if fold is not None and int8:
        raise typer.BadParameter(
            "the folds' ensemble (medseg ensemble) runs at fp32 or bf16, not int8",
            param_hint="--int8",
        )
    ready = prepare_training(
        manifest=manifest,
        plan_file=plan_file,
        config=config,
        cache=cache,
        data_root=data_root,
        tracking_uri=tracking_uri,
        max_minutes=max_minutes,
        epochs=epochs,
        registered_model_name=registered_model_name,
        int8=int8 or None,
    )
    if fold is not None:
        _train_one_fold(fold, folds, ready, manifest, plan_file, run_dir, tracking_uri)
        return
    from medseg.train.loop import train as run_training

    result = run_training(
        manifest_path=manifest,
        plan=ready.plan,
        cache_dir=ready.cache_dir,
        config=ready.settings,
        run_dir=run_dir,
        resume=resume,
        tracking_uri=tracking_uri,
    )
    if os.environ.get("RANK", "0") == "0":
        train_summary(result)


def _train_one_fold(
    fold: int,
    folds: int,
    ready: PreparedTraining,
    manifest: Path,
    plan_file: Path,
    run_dir: Path,
    tracking_uri: str | None,
) -> None:
    from medseg.train.cross_validation import fold_folder, train_fold
    from medseg.train.folds import load_or_make_folds

    split = load_or_make_folds(plan_file, manifest, folds=folds, seed=ready.plan.seed)
    record, trained = train_fold(
        fold,
        folds=split,
        manifest_path=manifest,
        plan=ready.plan,
        cache_dir=ready.cache_dir,
        config=ready.settings,
        run_dir=run_dir,
        tracking_uri=tracking_uri,
    )
    if record is None:  # another rank than 0 under torchrun: rank 0 reports
        return
    state = "trained" if trained else "finished earlier, skipped"
    console.print(
        f"[bold]Fold {fold} of {folds}[/bold] {state}: out-of-fold mean Dice "
        f"{record.mean_dice:.4f} on {len(record.val)} cases; {fold_folder(run_dir, fold)}   "
        f"MLflow run: {record.run_id}"
    )


def train_summary(result: TrainResult) -> None:
    """Print where training stopped, the best validation Dice and where the model is."""
    state = result.state
    console.print(
        f"[bold]Training stopped by {result.stopped_by}[/bold] after {state.epoch} epochs, "
        f"{state.step} steps, {state.elapsed_seconds / 60:.1f} min; "
        f"best validation mean Dice {result.best_mean_dice:.4f}"
    )
    console.print(f"checkpoints: {result.best_checkpoint.parent}   MLflow run: {result.run_id}")
    if result.model_version is not None:
        console.print(f"registered model version {result.model_version}")
