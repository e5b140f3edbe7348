"""``medseg select`` as one call for the command and the pipeline stage: decide, store the
decision beside the folders, log it to MLflow."""

from __future__ import annotations

import re
from pathlib import Path

from medseg.preprocess.plan import Plan
from medseg.select.selection import SELECTION_JSON, SELECTION_TABLE, Selection, select


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
) -> tuple[Selection, str | None]:
    """Select (``medseg.select.selection.select``), write ``selection.json`` and
    ``selection.md`` into ``out_dir`` and log them in an MLflow run; returns the selection and
    the run id.

    Raises:
        ConfigError: see ``select``.
        TrackingUnavailableError: the tracking store cannot be reached.
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
    except BaseException:
        tracker.end(failed=True)
        raise
    tracker.end()
    return selection, tracker.run_id
