"""``medseg train``: a network from the cache, tracked in MLflow."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from medseg.cli.checks import interval, output_folder
from medseg.cli.options import DATA_ROOT, tracking_uri_option
from medseg.cli.render import console

if TYPE_CHECKING:
    from medseg.train.loop import TrainResult


def train(
    manifest: Path = typer.Option(..., "--manifest", "-m", exists=True, dir_okay=False),
    plan_file: Path = typer.Option(..., "--plan", "-p", exists=True, dir_okay=False),
    config: Path | None = typer.Option(
        None, "--config", "-c", exists=True, dir_okay=False, help="configs/train/*.yaml"
    ),
    cache: Path | None = typer.Option(
        None,
        callback=output_folder,
        help="Preprocessing cache (default: 'cache' beside the plan; built if missing).",
    ),
    run_dir: Path = typer.Option(
        Path("runs/train"), callback=output_folder, help="Checkpoints, pictures, curves."
    ),
    data_root: Path | None = DATA_ROOT,
    resume: bool = typer.Option(False, "--resume", help="Continue from run-dir's last checkpoint."),
    max_minutes: float | None = typer.Option(
        None, callback=interval("(0, inf)"), help="Time budget (overrides the config)."
    ),
    epochs: int | None = typer.Option(None, min=1, help="Epochs (overrides the config)."),
    registered_model_name: str | None = typer.Option(
        None, "--register", help="Register the model under this name (overrides the config)."
    ),
    tracking_uri: str | None = tracking_uri_option(),
) -> None:
    """Train a 2D/3D network from the cache; everything is tracked in MLflow.

    Runs on CUDA when present (with AMP), else CPU; under torchrun with DistributedDataParallel.
    """
    from medseg.tracking.store import require_tracking_store

    require_tracking_store(tracking_uri)  # seconds, before the imports and the preprocessing
    from medseg.manifest import read_manifest
    from medseg.preprocess.plan import Plan
    from medseg.train.config import check_against_plan, load_train_config
    from medseg.train.loop import train as run_training

    # Everything is checked before the (long) preprocessing starts.
    settings = load_train_config(
        config, max_minutes=max_minutes, epochs=epochs, registered_model_name=registered_model_name
    )
    plan_model = Plan.load(plan_file)
    check_against_plan(settings, plan_model, source=config)
    read_manifest(manifest)
    cache_dir = cache or plan_file.parent / "cache"
    if "RANK" not in os.environ:  # under torchrun the cache must exist beforehand
        from medseg.preprocess.stage import preprocess_manifest

        preprocess_manifest(manifest, plan=plan_model, cache_dir=cache_dir, data_root=data_root)
    result = run_training(
        manifest_path=manifest,
        plan=plan_model,
        cache_dir=cache_dir,
        config=settings,
        run_dir=run_dir,
        resume=resume,
        tracking_uri=tracking_uri,
    )
    if os.environ.get("RANK", "0") == "0":
        train_summary(result)


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
