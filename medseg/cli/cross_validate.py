"""``medseg cross-validate``: every fold of a cross-validation in sequence, resumable."""

from __future__ import annotations

from pathlib import Path

import typer

from medseg.cli.checks import interval, output_folder
from medseg.cli.options import DATA_ROOT, tracking_uri_option
from medseg.cli.render import console
from medseg.cli.train import CACHE, CONFIG, EPOCHS, FOLDS, MANIFEST, PLAN, prepare_training


def cross_validate(
    manifest: Path = MANIFEST,
    plan_file: Path = PLAN,
    config: Path | None = CONFIG,
    cache: Path | None = CACHE,
    run_dir: Path = typer.Option(
        Path("runs/cv"), callback=output_folder, help="One folder per fold, summary.json."
    ),
    data_root: Path | None = DATA_ROOT,
    folds: int = FOLDS,
    max_minutes: float | None = typer.Option(
        None, callback=interval("(0, inf)"), help="Time budget of each fold (overrides the config)."
    ),
    epochs: int | None = EPOCHS,
    tracking_uri: str | None = tracking_uri_option(),
) -> None:
    """Train every cross-validation fold in sequence and report the per-structure CV Dice.

    Resumable: run it again and finished folds are skipped, a killed fold continues from its
    last checkpoint. One MLflow parent run, a child run per fold.
    """
    ready = prepare_training(
        manifest=manifest,
        plan_file=plan_file,
        config=config,
        cache=cache,
        data_root=data_root,
        tracking_uri=tracking_uri,
        max_minutes=max_minutes,
        epochs=epochs,
    )
    from medseg.train.cross_validation import cross_validate as run_cross_validation
    from medseg.train.folds import load_or_make_folds

    result = run_cross_validation(
        folds=load_or_make_folds(plan_file, manifest, folds=folds, seed=ready.plan.seed),
        manifest_path=manifest,
        plan=ready.plan,
        cache_dir=ready.cache_dir,
        config=ready.settings,
        run_dir=run_dir,
        tracking_uri=tracking_uri,
    )
    skipped = len(result.folds) - len(result.trained)
    console.print(
        f"[bold]Cross-validation of {len(result.folds)} folds[/bold] "
        f"({len(result.trained)} trained now, {skipped} finished earlier): CV mean Dice "
        f"{result.mean_dice:.4f}"
    )
    for name, dice in result.dice.items():
        console.print(f"  {name}: {dice:.4f}")
    console.print(f"folder: {result.run_dir}   MLflow parent run: {result.run_id}")
