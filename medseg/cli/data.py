"""``medseg ingest``, ``import-dataset`` and ``validate-manifest``: data in, checked."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from medseg.cli.checks import (
    interval,
    output_file,
    output_folder,
    parse_label_names,
    refuse_no_scans,
)
from medseg.cli.options import DATA_ROOT, NON_FINITE, case_ids_option
from medseg.cli.render import console, phase_progress
from medseg.ingest import IngestReport, OutcomeKind
from medseg.ingest.case_ids import CaseIdScheme
from medseg.ingest.non_finite import NonFinitePolicy

if TYPE_CHECKING:
    from medseg.datasets import ImportReport
    from medseg.manifest_validation import ManifestValidation


def ingest(
    input_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder to search."),
    out: Path = typer.Option(
        ..., "--out", "-o", callback=output_folder, help="Output folder (volumes + manifest)."
    ),
    labels: Path | None = typer.Option(
        None,
        "--labels",
        exists=True,
        file_okay=False,
        help="Folder of label maps <case_id>.nii.gz (.nrrd, .mha...) to pair with the scans.",
    ),
    case_ids: CaseIdScheme = case_ids_option("hash: anonymous ids; folder: series folder names."),
    workers: int | None = typer.Option(None, min=1, help="Decoder processes (default: all cores)."),
    force: bool = typer.Option(False, "--force", help="Convert again even if unchanged."),
    non_finite: NonFinitePolicy = NON_FINITE,
    channels: Path | None = typer.Option(
        None, "--channels", exists=True, dir_okay=False, help="Channel rule YAML (DICOM series)."
    ),
) -> None:
    """Convert every DICOM series and NIfTI, NRRD or MetaImage file under INPUT_DIR into
    canonical volumes.

    Exit code 0 when every scan converted (skipped non-scan files are not failures),
    1 when some scans, files or folders failed (the others are still written), 2 when it
    cannot start (e.g. --labels is not a folder).
    """
    from medseg.ingest import ingest as run_ingest
    from medseg.ingest.channel_rule import load_channel_rule

    rule = load_channel_rule(channels) if channels is not None else None
    with phase_progress() as progress:
        report = run_ingest(
            input_dir,
            out,
            case_ids=case_ids,
            labels_dir=labels,
            workers=workers,
            force=force,
            non_finite=non_finite,
            on_progress=progress,
            channel_rule=rule,
        )
    if not report.outcomes:
        refuse_no_scans(input_dir, ignored=report.ignored_files)
    ingest_summary(report)
    raise typer.Exit(report.exit_code)


def import_dataset(
    dataset_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Dataset folder."),
    out: Path = typer.Option(
        ..., "--out", "-o", callback=output_file, help="Manifest to write (NAME.jsonl)."
    ),
    data_root: Path | None = typer.Option(
        None,
        "--data-root",
        exists=True,
        file_okay=False,
        help="Write paths relative to this folder instead of the manifest's.",
    ),
    modality: str | None = typer.Option(None, help="Modality when dataset.json does not say."),
    val_fraction: float = typer.Option(
        0.2, callback=interval("[0, 1)"), help="Fraction of labelled cases for validation."
    ),
    test_fraction: float = typer.Option(
        0.0, callback=interval("[0, 1)"), help="Fraction of labelled cases held out for test."
    ),
    seed: int = typer.Option(0, help="Seed of the reproducible split assignment."),
    label_names: dict[int, str] | None = typer.Option(
        None,
        "--label-names",
        parser=parse_label_names,
        metavar="VALUE=NAME,...",
        help='Names when no dataset.json has them: "1=anterior,2=posterior".',
    ),
) -> None:
    """Import an MSD/nnU-Net (imagesTr/labelsTr) or flat images/+labels/ dataset into a manifest.

    Orphans and rejected pairs are reported, not fatal; exit code 1 when any pair was rejected.
    """
    from medseg.datasets import import_dataset as run_import
    from medseg.manifest import write_label_names

    if val_fraction + test_fraction > 1:
        raise typer.BadParameter(
            f"{val_fraction:g} + {test_fraction:g} leaves no share for training",
            param_hint="--val-fraction + --test-fraction",
        )
    report = run_import(
        dataset_dir,
        manifest_path=out,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        data_root=data_root,
        modality=modality,
    )
    if label_names:
        names = {0: "background", **label_names}
        write_label_names(names, out)
        report.label_names = names
    import_summary(report)
    raise typer.Exit(1 if report.rejected else 0)


def validate_manifest(
    manifest: Path = typer.Argument(..., exists=True, dir_okay=False, help="Manifest (.jsonl)."),
    data_root: Path | None = DATA_ROOT,
) -> None:
    """Check a manifest: files exist, checksums, shapes/spacings, image/label grids, labels.

    Exit code 0 when every case is valid, 1 otherwise.
    """
    from medseg.manifest_validation import validate_manifest as run_validation

    result = run_validation(manifest, data_root=data_root)
    validation_summary(result)
    raise typer.Exit(0 if result.ok else 1)


def ingest_summary(report: IngestReport) -> None:
    """Print converted, skipped and failed inputs as tables, then the totals."""
    done = report.of_kind(OutcomeKind.CONVERTED, OutcomeKind.UNCHANGED)
    if done:
        table = Table(title="Converted", show_lines=False)
        table.add_column("case_id", no_wrap=True)
        table.add_column("source", overflow="fold")
        for column in ("modality", "shape", "spacing (mm)", "label"):
            table.add_column(column, no_wrap=True)
        table.add_column("note", overflow="ellipsis", max_width=48)
        for outcome in sorted(done, key=lambda o: o.case_id or ""):
            record = outcome.record
            assert record is not None
            note = "unchanged (already ingested)" if outcome.kind is OutcomeKind.UNCHANGED else ""
            table.add_row(
                record.case_id,
                outcome.source or "",
                record.modality,
                "x".join(str(n) for n in record.shape),
                " x ".join(f"{v:.3g}" for v in record.spacing),
                "yes" if record.label else "",
                "; ".join(filter(None, [note, outcome.reason])),
            )
        console.print(table)
    for kind, title in ((OutcomeKind.SKIPPED, "Skipped"), (OutcomeKind.FAILED, "Failed")):
        rows = report.of_kind(kind)
        if not rows:
            continue
        table = Table(title=title)
        for column in ("source or case", "files", "reason"):
            table.add_column(column, overflow="fold")
        for outcome in rows:
            name = outcome.source or outcome.case_id or ""
            table.add_row(name, str(outcome.files), outcome.reason)
        console.print(table)
    counts = {kind: len(report.of_kind(kind)) for kind in OutcomeKind}
    totals = ", ".join(f"{counts[kind]} {kind.value}" for kind in OutcomeKind)
    console.print(
        f"[bold]{totals}[/bold] ({report.unreadable} unreadable files or folders); "
        f"{report.ignored_files} other files ignored, {report.links_not_followed} links to "
        f"folders searched already not followed (see ingest_report.json). "
        f"Manifest: {report.manifest_path}"
    )


def import_summary(report: ImportReport) -> None:
    """Print what a dataset import wrote, its splits, orphans and rejected pairs."""
    splits = ", ".join(f"{count} {split}" for split, count in report.split_counts.items())
    console.print(
        f"[bold]{len(report.records)} cases[/bold] ({report.layout} layout, modality "
        f"{report.modality}): {splits or 'no splits'} -> {report.manifest_path}; "
        f"{len(report.rejected)} pairs rejected, {len(report.orphans)} orphans left out"
    )
    console.print(f"labels: {report.label_names}")
    if report.channel_names:
        console.print(f"channels: {', '.join(report.channel_names)} (stacked into 4D cases)")
    for title, rows in (
        ("Orphans (left out)", [(o.case_id, o.path, o.reason) for o in report.orphans]),
        ("Rejected pairs", [(p.case_id, p.kind.value, p.detail) for p in report.rejected]),
    ):
        if rows:
            table = Table(title=title)
            for column in ("case_id", "what", "why"):
                table.add_column(column, overflow="fold")
            for row in rows:
                table.add_row(*(str(value) for value in row))
            console.print(table)


def validation_summary(result: ManifestValidation) -> None:
    """Print a manifest check: OK, or a table of problems per case."""
    if result.ok:
        console.print(f"[green]{result.manifest_path}: {result.n_cases} cases, all valid[/green]")
        return
    table = Table(title=f"{result.manifest_path}: problems")
    for column in ("case_id", "problem", "detail"):
        table.add_column(column, overflow="fold")
    for problem in result.problems:
        table.add_row(problem.case_id, problem.kind.value, problem.detail)
    console.print(table)
    console.print(f"[red]{len(result.by_case())} of {result.n_cases} cases have problems[/red]")
