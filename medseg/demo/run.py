"""The end-to-end demo: synthetic CT phantoms as real DICOM series, then ``pipelines/demo.yaml``.

``<out>/data/train`` holds the phantoms the model learns from (DICOM series + NIfTI label
maps), ``<out>/data/heldout`` phantoms it never sees (other seeds, other names). The pipeline
ingests the training series, plans, preprocesses, trains a 3D U-Net, registers it,
batch-predicts the held-out DICOM series and evaluates against their labels. MLflow runs on an
embedded SQLite store in ``<out>/mlruns`` unless a tracking URI is given. Everything is
created from the repository alone; nothing is downloaded. Re-running regenerates nothing and
every pipeline stage is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

from medseg.demo.phantom import generate_demo_dataset
from medseg.pipeline.runner import PipelineReport, RunSelection, StageEvent, run_pipeline
from medseg.pipeline.spec import load_pipeline
from medseg.progress import ProgressCallback

HELDOUT_SEED_OFFSET = 1000  # held-out phantoms come from seed + 1000: never a training anatomy


def _dataset_is_current(data_dir: Path, *, n_cases: int, seed: int) -> bool:
    try:
        summary = json.loads((data_dir / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return summary.get("seed") == seed and len(summary.get("cases", [])) == n_cases


def prepare_demo_data(
    data_dir: Path,
    *,
    n_train: int,
    n_heldout: int,
    seed: int,
    on_progress: ProgressCallback | None = None,
) -> None:
    """Generate (once) the training and held-out phantoms under ``data_dir``."""
    sets = (
        ("train", "phantom", n_train, seed),
        ("heldout", "heldout", n_heldout, seed + HELDOUT_SEED_OFFSET),
    )
    for folder, prefix, count, set_seed in sets:
        target = Path(data_dir) / folder
        if _dataset_is_current(target, n_cases=count, seed=set_seed):
            continue
        if on_progress:
            on_progress(f"Phantoms ({folder})", 0, count)
        generate_demo_dataset(target, n_cases=count, seed=set_seed, prefix=prefix)
        if on_progress:
            on_progress(f"Phantoms ({folder})", count, count)


def demo_tracking_uri(out_dir: Path) -> str:
    """The demo's embedded MLflow store: ``sqlite:///<out>/mlruns/mlflow.db``."""
    database = Path(out_dir).resolve() / "mlruns" / "mlflow.db"
    database.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{database}"


def run_demo(
    out_dir: Path,
    *,
    pipeline: Path,
    n_train: int = 14,
    n_heldout: int = 6,
    seed: int = 0,
    tracking: str | None = None,
    force: bool = False,
    on_stage: StageEvent | None = None,
    on_progress: ProgressCallback | None = None,
) -> PipelineReport:
    """Generate the phantoms (once) and run ``pipeline`` on them into ``out_dir/work``."""
    out_dir = Path(out_dir)
    data_dir = out_dir / "data"
    prepare_demo_data(
        data_dir, n_train=n_train, n_heldout=n_heldout, seed=seed, on_progress=on_progress
    )
    return run_pipeline(
        load_pipeline(pipeline),
        work_dir=out_dir / "work",
        data_root=data_dir,
        selection=RunSelection(force=force),
        tracking=tracking or demo_tracking_uri(out_dir),
        on_stage=on_stage,
        on_progress=on_progress,
    )
