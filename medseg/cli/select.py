"""``medseg select``: the best configuration or ensemble and its post-processing, chosen on
the out-of-fold predictions of cross-validation."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from medseg.cli.checks import output_folder
from medseg.cli.options import tracking_uri_option
from medseg.cli.render import console


def select(
    folders: list[Path] = typer.Argument(
        ..., exists=True, file_okay=False, help="Cross-validation folders (medseg cross-validate)."
    ),
    plan_file: Path = typer.Option(..., "--plan", "-p", exists=True, dir_okay=False),
    cache: Path | None = typer.Option(
        None, exists=True, file_okay=False, help="Preprocessing cache (default: beside the plan)."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        callback=output_folder,
        help="Where selection.json and selection.md go (default: 'selection' beside the "
        "first folder).",
    ),
    experiment: str = typer.Option("medseg", help="MLflow experiment of the selection run."),
    register: str | None = typer.Option(
        None,
        "--register",
        help="Register the chosen configurations' folds as one ensemble model under this name, "
        "with the chosen post-processing.",
    ),
    alias: str | None = typer.Option(None, help="Point this alias at the registered version."),
    tracking_uri: str | None = tracking_uri_option(),
) -> None:
    """Compare the configurations and their ensembles on the out-of-fold predictions, choose
    the best by mean CV Dice, then the post-processing of each structure that raises its CV
    Dice (keep the largest component, or remove components under a size learned from the
    training labels)."""
    from medseg.tracking.store import require_tracking_store

    require_tracking_store(tracking_uri)
    from medseg.preprocess.plan import Plan
    from medseg.select.stage import run_selection

    outcome = run_selection(
        folders,
        plan=Plan.load(plan_file),
        cache_dir=cache or plan_file.parent / "cache",
        out_dir=out or folders[0].parent / "selection",
        experiment=experiment,
        tracking_uri=tracking_uri,
        register=register,
        alias=alias,
    )
    selection = outcome.selection
    candidates = Table(title="Candidates (out-of-fold predictions)")
    for column in ("candidate", "mean CV Dice"):
        candidates.add_column(column)
    for rank, candidate in enumerate(selection.candidates):
        chosen = " (chosen)" if rank == 0 else ""
        candidates.add_row(candidate.name + chosen, f"{candidate.mean_dice:.4f}")
    console.print(candidates)
    decisions = Table(title="Post-processing per structure")
    for column in ("structure", "CV Dice", "chosen", "CV Dice after"):
        decisions.add_column(column)
    for decision in selection.decisions:
        decisions.add_row(
            selection.label_names[decision.value],
            f"{decision.dice_before:.4f}",
            decision.chosen.label,
            f"{decision.dice_after:.4f}",
        )
    console.print(decisions)
    console.print(
        f"[bold]Chosen: {selection.best.name}[/bold], mean CV Dice "
        f"{selection.best.mean_dice:.4f} -> {selection.postprocessed_mean_dice:.4f} with its "
        f"post-processing; MLflow run {outcome.run_id}"
    )
    if outcome.registered is not None:
        console.print(
            f"registered {len(outcome.registered.members)} fold models as one ensemble: "
            f"{outcome.registered.model_uri}" + (f" (alias {alias})" if alias else "")
        )
