"""Evaluation reports: CSV (one row per case and structure), JSON summary, HTML with pictures.

An undefined value reads the same everywhere: an empty cell in ``metrics.csv``, the HTML
report and the console, and ``null`` in ``summary.json``. A metric is undefined when it is not
a finite number: every metric of a structure absent from both maps (NaN), and the surface
distances (HD95) of a structure absent from one of them (infinitely far); a mean over cases
with such an infinite value is undefined too, so a missed structure is never averaged away.
"""

from __future__ import annotations

import csv
import html
import io
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medseg.evaluate.pairing import Pairing
from medseg.evaluate.stage import METRICS, EvaluationReport
from medseg.io.atomic import write_json_atomic, write_text_atomic
from medseg.io.formats import read_volume, volume_files_named
from medseg.overlays import save_structure_views

if TYPE_CHECKING:
    from medseg.tracking.runs import RunTracker

logger = logging.getLogger(__name__)


UNDEFINED_RULE = (
    "undefined: every metric of a structure absent from both maps, and HD95 of a structure "
    "absent from one of them (and its mean over cases); absent from one map: Dice, IoU, NSD 0"
)


def defined(value: float | None) -> float | None:
    """``value``, or None when the metric is undefined (NaN or infinite)."""
    return None if value is None or not math.isfinite(value) else value


def write_csv(report: EvaluationReport, path: Path) -> Path:
    """One row per (case, structure) with every metric, then per region (``region <name>``);
    undefined values are empty cells."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["case_id", "structure", *METRICS])
    for case in report.cases:
        rows = case.metrics | {f"region {name}": values for name, values in case.regions.items()}
        for structure, metrics in rows.items():
            writer.writerow(
                [
                    case.case_id,
                    structure,
                    *("" if defined(metrics[m]) is None else f"{metrics[m]:.6g}" for m in METRICS),
                ]
            )
    write_text_atomic(path, buffer.getvalue())
    return path


def summary(report: EvaluationReport) -> dict:
    """JSON-ready summary: means per structure, overall means, failures and unpaired cases."""
    means = report.structure_means()
    return {
        "cases": len(report.cases),
        "mean": {
            metric: defined(report.overall_mean(metric))
            for metric in ("dice", "iou", "hd95_mm", "nsd")
        },
        "structures": {
            name: {m: defined(v) for m, v in values.items()} for name, values in means.items()
        },
        "region_mean_dice": defined(report.overall_mean("dice", regions=True)),
        "regions": {
            name: {m: defined(v) for m, v in values.items()}
            for name, values in report.region_means().items()
        },
        "ignore_label": report.ignore_label,
        "ignored_voxels": {case.case_id: case.ignored_voxels for case in report.cases},
        "failed": report.failed,
        "missing_prediction": report.missing_prediction,
        "missing_reference": report.missing_reference,
        "empty_structure_rule": f"{UNDEFINED_RULE}; null here, empty cells in metrics.csv",
    }


def write_reports(
    report: EvaluationReport,
    pairing: Pairing,
    *,
    out_dir: Path,
    images: Path | None = None,
    max_pictures_per_case: int = 8,
) -> dict[str, Path]:
    """Write ``metrics.csv``, ``summary.json``, ``pictures/*.png`` and ``report.html``."""
    out_dir = Path(out_dir)
    paths = {"csv": write_csv(report, out_dir / "metrics.csv")}
    result = summary(report)
    paths["json"] = out_dir / "summary.json"
    write_json_atomic(paths["json"], result)
    pictures = _pictures(
        report, pairing, out_dir=out_dir, images=images, limit=max_pictures_per_case
    )
    paths["html"] = out_dir / "report.html"
    write_text_atomic(paths["html"], _html(report, result, pictures))
    return paths


def _pictures(
    report: EvaluationReport, pairing: Pairing, *, out_dir: Path, images: Path | None, limit: int
) -> dict[str, list[Path]]:
    files = {case: (pred, ref) for case, pred, ref in pairing.pairs}
    names = {name: value for value, name in report.label_names.items()}
    written: dict[str, list[Path]] = {}
    for case in report.cases:
        prediction, reference = (read_volume(p).to_closest_ras() for p in files[case.case_id])
        image = None
        scans = volume_files_named(images, case.case_id) if images is not None else []
        if scans:
            scan = read_volume(scans[0]).to_closest_ras()
            image = np.asarray(scan.array) if scan.same_grid(reference) else None
        present = [
            s
            for s in case.metrics
            if case.metrics[s]["volume_reference_ml"] or case.metrics[s]["volume_prediction_ml"]
        ]
        written[case.case_id] = [
            save_structure_views(
                out_dir / "pictures" / f"{case.case_id}_{structure}.png",
                reference=np.asarray(reference.array),
                prediction=np.asarray(prediction.array),
                value=names[structure],
                image=image,
                title=f"{case.case_id}: {structure} (Dice {case.metrics[structure]['dice']:.3f})",
            )
            for structure in present[:limit]
        ]
    return written


def _html(report: EvaluationReport, result: dict, pictures: dict[str, list[Path]]) -> str:
    def cell(value: float | None) -> str:
        return "" if value is None else f"{value:.4g}"

    def table(first: str, means: dict[str, dict[str, float | None]]) -> str:
        header = "".join(f"<th>{m}</th>" for m in METRICS)
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td>"
            + "".join(f"<td>{cell(values[m])}</td>" for m in METRICS)
            + "</tr>"
            for name, values in means.items()
        )
        return f"<table><tr><th>{first}</th>{header}</tr>{rows}</table>"

    sections = "".join(
        f"<h3>{html.escape(case)}</h3>"
        + "".join(f'<img src="pictures/{p.name}" width="600">' for p in paths)
        for case, paths in pictures.items()
    )
    problems = "".join(
        f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in report.failed.items()
    )
    problems += "".join(
        f"<li>{html.escape(c)}: no prediction</li>" for c in report.missing_prediction
    )
    problems += "".join(
        f"<li>{html.escape(c)}: no reference</li>" for c in report.missing_reference
    )
    mean = result["mean"]
    means = (
        f"mean Dice {cell(mean['dice'])}, IoU {cell(mean['iou'])}, "
        f"HD95 {cell(mean['hd95_mm'])} mm, NSD {cell(mean['nsd'])}"
    )
    if result["regions"]:
        means += f"; mean Dice over the regions {cell(result['region_mean_dice'])}"
    if report.ignore_label is not None:
        counts = ", ".join(
            f"{html.escape(case)} {count}" for case, count in result["ignored_voxels"].items()
        )
        means += (
            f"</p><p>reference voxels of the ignore label {report.ignore_label}, left out of "
            f"Dice and IoU: {counts or 'no case'}"
        )
    style = "body{font-family:sans-serif} td,th{padding:2px 8px;text-align:right}"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>medseg evaluation</title>"
        f"<style>{style}</style></head><body>"
        f"<h1>Evaluation of {result['cases']} cases</h1><p>{means}</p>"
        + table("structure", result["structures"])
        + ("<h2>Regions</h2>" + table("region", result["regions"]) if result["regions"] else "")
        + f"<h2>Problems</h2><ul>{problems or '<li>none</li>'}</ul>"
        f"<h2>Pictures</h2>{sections}</body></html>"
    )


def log_to_run(
    paths: dict[str, Path], result: dict, *, run_id: str, tracking_uri: str | None
) -> str | None:
    """Log the means (per structure and overall) and the report files into an MLflow run.

    The run keeps its status (a FINISHED training run stays FINISHED). The reports are
    already written, so a failure is a warning, not an error: it is logged and returned
    (None when everything was logged). A server that went away costs seconds, not minutes
    (``medseg.tracking.store.bounded_http_retries``); check the run before the work with
    ``medseg.tracking.client.require_run``.
    """
    from medseg.tracking.store import bounded_http_retries, require_tracking_store

    try:
        require_tracking_store(tracking_uri)  # seconds, and before mlflow is imported
        from medseg.tracking.runs import RunTracker

        with bounded_http_retries():
            tracker = RunTracker(tracking_uri=tracking_uri).attach(run_id)
            log_evaluation(tracker, paths, result)
            tracker.end()
    except Exception as error:  # the report files stand whatever MLflow says
        detail = (str(error).splitlines() or [type(error).__name__])[0][:300]
        warning = f"evaluation not logged to MLflow run {run_id}: {detail}"
        logger.warning("%s", warning)
        return warning
    return None


def log_evaluation(tracker: RunTracker, paths: dict[str, Path], result: dict) -> None:
    """Log the means (per structure, per region and overall) and the report files into a
    running tracker."""
    metrics = {f"eval_mean_{k}": v for k, v in result["mean"].items() if v is not None}
    for structure, values in result["structures"].items():
        metrics.update({f"eval_{m}_{structure}": v for m, v in values.items() if v is not None})
    if result.get("region_mean_dice") is not None:
        metrics["eval_region_mean_dice"] = result["region_mean_dice"]
    for region, values in result.get("regions", {}).items():
        metrics.update({f"eval_{m}_region_{region}": v for m, v in values.items() if v is not None})
    tracker.log_metrics(metrics, step=0)
    for path in paths.values():
        tracker.log_artifact(path, artifact_path="evaluation")
    pictures = paths["html"].parent / "pictures"
    for picture in sorted(pictures.glob("*.png")):
        tracker.log_artifact(picture, artifact_path="evaluation/pictures")
