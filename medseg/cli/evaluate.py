"""``medseg evaluate``: label maps against references; CSV, JSON and HTML reports."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from medseg.cli.checks import interval, output_folder
from medseg.cli.options import tracking_uri_option
from medseg.cli.render import console, metric_cell

if TYPE_CHECKING:
    from medseg.evaluate.stage import EvaluationReport


def evaluate(
    predictions: Path = typer.Argument(..., exists=True, help="Label map file or folder."),
    references: Path = typer.Argument(..., exists=True, help="Reference file or folder."),
    out: Path = typer.Option(..., "--out", "-o", callback=output_folder, help="Report folder."),
    labels: Path | None = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="Label names: JSON {value: name}, a dataset.json or a manifest .labels.json.",
    ),
    tolerance_mm: float = typer.Option(
        1.0, callback=interval("(0, inf)"), help="Normalized surface Dice tolerance (mm)."
    ),
    images: Path | None = typer.Option(
        None,
        exists=True,
        file_okay=False,
        help="Folder of scans <case>.nii.gz (.nrrd, .mha...) for pictures.",
    ),
    run_id: str | None = typer.Option(
        None, envvar="MLFLOW_RUN_ID", help="Log the report into this MLflow run."
    ),
    tracking_uri: str | None = tracking_uri_option("MLflow tracking URI."),
) -> None:
    """Per-structure Dice, IoU, HD95, surface Dice and volumes; CSV, JSON and HTML reports.

    Cases are paired by file name; a case missing on either side is reported. Exit code 1
    when a case is missing or failed.
    """
    from medseg.evaluate.pairing import pair_label_maps, reference_label_names
    from medseg.evaluate.report import log_to_run, summary, write_reports
    from medseg.evaluate.stage import evaluate_pairing
    from medseg.manifest import load_label_names, load_regions

    if run_id:  # the report is logged after the work: the run must be there before it
        from medseg.tracking.store import require_tracking_store

        require_tracking_store(tracking_uri)  # seconds, before importing mlflow
        from medseg.tracking.client import require_run

        require_run(run_id, tracking_uri=tracking_uri)
    pairing = pair_label_maps(predictions, references)
    names = load_label_names(labels) if labels else reference_label_names(pairing)
    regions = load_regions(labels) if labels else None
    report = evaluate_pairing(
        pairing, label_names=names, tolerance_mm=tolerance_mm, regions=regions
    )
    paths = write_reports(report, pairing, out_dir=out, images=images)
    if run_id:
        log_to_run(paths, summary(report), run_id=run_id, tracking_uri=tracking_uri)
    evaluation_summary(report, paths)
    incomplete = report.failed or report.missing_prediction or report.missing_reference
    raise typer.Exit(1 if incomplete else 0)


_EVALUATION_COLUMNS = {
    "Dice": "dice",
    "IoU": "iou",
    "HD95 mm": "hd95_mm",
    "NSD": "nsd",
    "volume ref mL": "volume_reference_ml",
    "volume pred mL": "volume_prediction_ml",
}


def evaluation_summary(report: EvaluationReport, paths: dict) -> None:
    """Per-structure means (empty cells: undefined) and where the reports are."""
    from medseg.evaluate.report import UNDEFINED_RULE

    table = Table(
        title=f"Evaluation of {len(report.cases)} cases", caption=f"Empty cell = {UNDEFINED_RULE}"
    )
    table.add_column("structure")
    for column in _EVALUATION_COLUMNS:
        table.add_column(column)
    for name, values in report.structure_means().items():
        table.add_row(name, *(metric_cell(values[m]) for m in _EVALUATION_COLUMNS.values()))
    for name, values in report.region_means().items():
        cells = (metric_cell(values[m]) for m in _EVALUATION_COLUMNS.values())
        table.add_row(f"region {name}", *cells)
    console.print(table)
    if report.ignore_label is not None:
        ignored = sum(case.ignored_voxels for case in report.cases)
        console.print(
            f"{ignored} reference voxels of the ignore label {report.ignore_label} left out of "
            "Dice and IoU (per case: summary.json 'ignored_voxels')"
        )
    for case, reason in report.failed.items():
        console.print(f"[red]{case}: {reason}[/red]")
    for case in report.missing_prediction:
        console.print(f"[red]{case}: no prediction[/red]")
    for case in report.missing_reference:
        console.print(f"[red]{case}: no reference[/red]")
    problems = len(report.failed) + len(report.missing_prediction) + len(report.missing_reference)
    console.print(
        f"[bold]{len(report.cases)} cases evaluated, {len(report.failed)} failed, "
        f"{len(report.missing_prediction)} without prediction, "
        f"{len(report.missing_reference)} without reference[/bold]",
        style="red" if problems else "green",
    )
    mean_dice = metric_cell(report.overall_mean("dice"))
    region_dice = metric_cell(report.overall_mean("dice", regions=True))
    console.print(
        (f"[bold]mean Dice {mean_dice}[/bold]; " if mean_dice else "")
        + (f"[bold]mean region Dice {region_dice}[/bold]; " if region_dice else "")
        + f"report: {paths['html']}"
    )
