"""``medseg plan`` + ``medseg preprocess``: bad cases reported, idempotent, resumable, usable."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medseg.cli import app
from medseg.datasets import import_dataset
from medseg.preprocess.cache import load_cache
from medseg.preprocess.plan import Plan
from medseg.train.sampling import BatchSampler, SampleSource
from tests.phantoms import write_phantom_dataset

SEEDS = (1, 3, 4, 6, 8)
CASES = [f"phantom_{seed:03d}" for seed in SEEDS]


@pytest.fixture()
def small_dataset(tmp_path: Path) -> Path:
    """Five phantom CTs (49 x 39 x 33 voxels at 3 x 3 x 4 mm) in the flat layout."""
    root = tmp_path / "phantoms"
    assert write_phantom_dataset(root, SEEDS) == CASES
    manifest = tmp_path / "phantoms.jsonl"
    import_dataset(root, manifest_path=manifest, val_fraction=0.2, modality="CT")
    return manifest


def _run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    return result


def test_plan_and_preprocess_then_resume(small_dataset: Path, tmp_path: Path) -> None:
    plan_file, cache = tmp_path / "plan.json", tmp_path / "cache"
    planned = _run("plan", str(small_dataset), "--out", str(plan_file), "--workers", "1")
    assert planned.exit_code == 0, planned.output
    plan = Plan.load(plan_file)
    assert plan.target_spacing == [3.0, 3.0, 4.0] and plan.fingerprint["n_cases"] == 4
    first = _run("preprocess", str(small_dataset), "--plan", str(plan_file), "--out", str(cache))
    assert first.exit_code == 0 and "5 preprocessed" in first.output, first.output
    second = _run("preprocess", str(small_dataset), "--plan", str(plan_file), "--out", str(cache))
    assert "0 preprocessed" in second.output and "5 unchanged" in second.output
    (cache / "cases/phantom_004/done.json").unlink()  # as if killed while writing it
    third = _run("preprocess", str(small_dataset), "--plan", str(plan_file), "--out", str(cache))
    assert "1 preprocessed" in third.output and "4 unchanged" in third.output
    assert not list(cache.rglob(".tmp-*"))


def test_a_corrupt_case_is_reported_and_the_others_are_cached(
    small_dataset: Path, tmp_path: Path
) -> None:
    plan_file, cache = tmp_path / "plan.json", tmp_path / "cache"
    _run("plan", str(small_dataset), "--out", str(plan_file), "--workers", "1")
    folder = small_dataset.parent / "phantoms"
    victim = folder / "images/phantom_006.nii.gz"
    victim.write_bytes(victim.read_bytes()[:200])
    # a label from another case: a different grid (each phantom is centred on its anatomy)
    shutil.copy(folder / "labels/phantom_001.nii.gz", folder / "labels/phantom_008.nii.gz")
    result = _run("preprocess", str(small_dataset), "--plan", str(plan_file), "--out", str(cache))
    assert result.exit_code == 1
    assert "phantom_006" in result.output and "3 preprocessed" in result.output
    report = json.loads((cache / "preprocess_report.json").read_text())
    failed = {o["case_id"]: o["reason"] for o in report["outcomes"] if o["status"] == "failed"}
    assert sorted(failed) == ["phantom_006", "phantom_008"]
    assert "phantom_006.nii.gz" in failed["phantom_006"]
    assert "label grid differs" in failed["phantom_008"]
    done = sorted(set(CASES) - set(failed))
    assert sorted(c.case_id for c in load_cache(cache)) == done


def test_cache_is_memory_mapped_and_feeds_the_sampler(small_dataset: Path, tmp_path: Path) -> None:
    plan_file, cache = tmp_path / "plan.json", tmp_path / "cache"
    options = tmp_path / "plan.yaml"
    options.write_text("border_weights: {enabled: true}\n")
    _run(
        "plan",
        str(small_dataset),
        "--out",
        str(plan_file),
        "--workers",
        "1",
        "--config",
        str(options),
    )
    _run("preprocess", str(small_dataset), "--plan", str(plan_file), "--out", str(cache))
    cases = load_cache(cache)
    assert all(isinstance(c.image, np.memmap) for c in cases)
    assert all(c.weights is not None and float(c.weights.min()) >= 1.0 for c in cases)
    plan = Plan.load(plan_file)
    config = plan.configurations["3d"]
    sampler = BatchSampler(
        [SampleSource.from_cached_case(c) for c in cases],
        patch_size=tuple(config.patch_size),
        batch_size=config.batch_size,
        foreground_fraction=plan.foreground_fraction,
        seed=0,
    )
    batch = sampler.next_batch()
    assert batch.image.shape == (config.batch_size, 1, *config.patch_size)
    forced = batch.label[batch.foreground_forced]
    assert forced.shape[0] >= 1 and all(patch.any() for patch in forced)


FORK_AFTER_TORCH = """
import sys
from pathlib import Path
import torch
from medseg.preprocess.config import PlanOptions
from medseg.preprocess.plan import plan_manifest
from medseg.preprocess.stage import preprocess_manifest

torch.set_num_threads(2)
torch.nn.functional.interpolate(torch.rand(1, 1, 40, 40, 40), scale_factor=1.3, mode="trilinear")
manifest, cache = Path(sys.argv[1]), Path(sys.argv[2])
plan = plan_manifest(manifest, options=PlanOptions(target_spacing=(2.0, 2.0, 2.0)), workers=2)
report = preprocess_manifest(manifest, plan=plan, cache_dir=cache, workers=2)
print(len(report.outcomes), report.exit_code)
"""


def test_parallel_preprocessing_after_torch_ran_in_the_parent(
    small_dataset: Path, tmp_path: Path
) -> None:
    """Forked workers would inherit a dead OpenMP pool and hang in their first resampling."""
    done = subprocess.run(
        [sys.executable, "-c", FORK_AFTER_TORCH, str(small_dataset), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["5", "0"]
