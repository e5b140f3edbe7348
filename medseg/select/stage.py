"""``medseg select`` as one call for the command and the pipeline stage: decide, store the
decision beside the folders, log it to MLflow."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medseg.preprocess.plan import Plan
from medseg.select.selection import SELECTION_JSON, SELECTION_TABLE, Selection, select

if TYPE_CHECKING:
    from medseg.tracking.ensemble import RegisteredEnsemble


@dataclass(frozen=True)
class SelectionOutcome:
    """The selection, its MLflow run and the registered ensemble (when asked for)."""

    selection: Selection
    run_id: str | None
    registered: RegisteredEnsemble | None = None


def metric_name(candidate: str) -> str:
    """An MLflow-safe metric name part for a candidate (``2d + 3d`` -> ``2d_and_3d``)."""
    return re.sub(r"[^0-9A-Za-z_.\-/ ]", "_", candidate.replace(" + ", "_and_"))


def run_selection(
    folders: list[Path],
    *,
    plan: Plan,
    cache_dir: Path,
    out_dir: Path,
    experiment: str,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
    register: str | None = None,
    alias: str | None = None,
) -> SelectionOutcome:
    """Select (``medseg.select.selection.select``), write ``selection.json`` and
    ``selection.md`` into ``out_dir`` and log them in an MLflow run. With ``register``, the
    chosen configurations' fold models become one ensemble, registered under that name (and
    ``alias``) with the decision and its post-processing rules (``postprocessing.json``),
    which ``medseg predict`` and ``batch`` then apply.

    Raises:
        ConfigError: see ``select``; a fold model cannot join the ensemble.
        TrackingUnavailableError: the tracking store cannot be reached.
        TrackingError: the registry refuses the name or alias.
    """
    from medseg.tracking.runs import RunTracker

    selection = select(folders, plan=plan, cache_dir=cache_dir)
    selection.save(out_dir)
    tracker = RunTracker(tracking_uri=tracking_uri).start(
        experiment=experiment,
        run_name="select",
        tags={"medseg.stage": "select"},
        parent_run_id=parent_run_id,
    )
    try:
        tracker.log_params(
            {
                "configurations": [c.name for c in selection.configurations],
                "chosen": selection.best.name,
                "postprocessing": {
                    selection.label_names[d.value]: d.chosen.label for d in selection.decisions
                },
            }
        )
        metrics = {f"cv_mean_dice/{metric_name(c.name)}": c.mean_dice for c in selection.candidates}
        metrics["selected_cv_mean_dice"] = selection.best.mean_dice
        metrics["postprocessed_cv_mean_dice"] = selection.postprocessed_mean_dice
        tracker.log_metrics(metrics, step=0)
        for name in (SELECTION_JSON, SELECTION_TABLE):
            tracker.log_artifact(Path(out_dir) / name, artifact_path="selection")
        registered = None
        if register is not None:
            from medseg.tracking.ensemble import register_ensemble

            registered = register_ensemble(
                [uri for configuration in selection.members for uri in configuration.member_uris()],
                name=register,
                alias=alias,
                tracking_uri=tracking_uri,
                postprocessing=selection.as_json(),
                experiment=experiment,
                parent_run_id=tracker.run_id,
            )
            tracker.set_tags({"medseg.select.model_uri": registered.model_uri})
    except BaseException:
        tracker.end(failed=True)
        raise
    tracker.end()
    return SelectionOutcome(selection, tracker.run_id, registered)
