"""``medseg plan`` and ``medseg preprocess``: the plan and the preprocessing cache."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from medseg.cli.checks import output_file, output_folder
from medseg.cli.options import DATA_ROOT, WORKERS
from medseg.cli.render import console, phase_progress

if TYPE_CHECKING:
    from medseg.preprocess.plan import Plan
    from medseg.preprocess.stage import PreprocessReport


def plan(
    manifest: Path = typer.Argument(..., exists=True, dir_okay=False, help="Data manifest."),
    out: Path = typer.Option(
        ..., "--out", "-o", callback=output_file, help="Plan file to write (plan.json)."
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        exists=True,
        dir_okay=False,
        help="Plan options YAML (configs/plan/*.yaml); overrides.",
    ),
    data_root: Path | None = DATA_ROOT,
    workers: int = WORKERS,
) -> None:
    """Fingerprint the training cases and write the preprocessing/network plan."""
    from medseg.preprocess.config import load_plan_options
    from medseg.preprocess.plan import plan_manifest

    result = plan_manifest(
        manifest, options=load_plan_options(config), data_root=data_root, workers=workers
    )
    result.save(out)
    plan_summary(result, out)


def preprocess(
    manifest: Path = typer.Argument(..., exists=True, dir_okay=False, help="Data manifest."),
    plan_file: Path = typer.Option(..., "--plan", exists=True, dir_okay=False, help="plan.json"),
    out: Path = typer.Option(..., "--out", "-o", callback=output_folder, help="Cache folder."),
    data_root: Path | None = DATA_ROOT,
    workers: int = WORKERS,
    force: bool = typer.Option(False, "--force", help="Redo cases even if unchanged."),
) -> None:
    """Resample, normalize and crop every case into a memory-mappable cache.

    Exit code 0 when every case succeeded, 1 when some failed (the others are cached).
    """
    from medseg.preprocess.plan import Plan
    from medseg.preprocess.stage import preprocess_manifest

    with phase_progress() as progress:
        report = preprocess_manifest(
            manifest,
            plan=Plan.load(plan_file),
            cache_dir=out,
            data_root=data_root,
            workers=workers,
            force=force,
            on_progress=progress,
        )
    preprocess_summary(report)
    raise typer.Exit(report.exit_code)


def plan_summary(plan: Plan, path: object) -> None:
    """Print the plan's main choices."""
    table = Table(title=f"Plan -> {path}")
    table.add_column("choice")
    table.add_column("value", overflow="fold")
    table.add_row("cases fingerprinted", str(plan.fingerprint["n_cases"]))
    normalizations = ", ".join(
        f"{name}: {normalization.scheme.value}"
        for name, normalization in zip(plan.channel_names, plan.channel_normalization, strict=True)
    )
    table.add_row("modality / normalization", f"{plan.modality} / {normalizations}")
    table.add_row("target spacing (mm)", " x ".join(f"{v:.3g}" for v in plan.target_spacing))
    table.add_row("median shape", "x".join(str(v) for v in plan.median_shape))
    for name, configuration in plan.configurations.items():
        table.add_row(
            f"{name} patch / batch",
            f"{'x'.join(str(v) for v in configuration.patch_size)} / {configuration.batch_size}"
            f" ({len(configuration.pool_strides)} poolings)",
        )
    table.add_row("labels", ", ".join(f"{k}: {v}" for k, v in plan.label_names.items()))
    if plan.ignore_label is not None:
        table.add_row("ignore label", f"{plan.ignore_label} (in no loss or metric)")
    console.print(table)


def preprocess_summary(report: PreprocessReport) -> None:
    """Print counts, mean time per case and failures."""
    from medseg.preprocess.stage import CaseStatus

    done = report.with_status(CaseStatus.DONE)
    failed = report.with_status(CaseStatus.FAILED)
    if failed:
        table = Table(title="Failed cases")
        table.add_column("case_id", no_wrap=True)
        table.add_column("reason", overflow="fold")
        for outcome in failed:
            table.add_row(outcome.case_id, outcome.reason)
        console.print(table)
    mean = sum(o.seconds for o in done) / len(done) if done else 0.0
    console.print(
        f"[bold]{len(done)} preprocessed[/bold] ({mean:.2f} s/case), "
        f"{len(report.with_status(CaseStatus.UNCHANGED))} unchanged, {len(failed)} failed -> "
        f"{report.cache_dir}"
    )
