"""``medseg demo``: phantoms as DICOM, then pipelines/demo.yaml end to end with MLflow.

The default suite runs the shipped demo pipeline with a one-epoch training (the code paths of
every stage, in about a minute); the full demo with its quality and time goals is marked slow.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from medseg.cli import app
from medseg.demo.phantom import PHANTOM_LABELS, sample_anatomy
from medseg.io.nifti import read_nifti
from medseg.manifest import read_label_names, read_manifest
from medseg.pipeline.records import load_record

REPOSITORY = Path(__file__).resolve().parents[2]
STAGES = ("ingest", "plan", "preprocess", "train", "register", "predict", "evaluate")


@dataclass(frozen=True)
class DemoRun:
    out: Path
    output: str
    exit_code: int

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.out / 'mlruns' / 'mlflow.db'}"


def _quick_pipeline(folder: Path) -> Path:
    """The shipped demo pipeline, with one short epoch of training."""
    text = (REPOSITORY / "pipelines" / "demo.yaml").read_text()
    text = text.replace("config_root: ..", f"config_root: {REPOSITORY}")
    old = "    config: configs/train/demo.yaml\n"
    assert old in text
    text = text.replace(old, old + "    epochs: 1\n")
    path = folder / "demo-quick.yaml"
    path.write_text(text)
    return path


def _demo(out: Path, pipeline: Path, *extra: str) -> DemoRun:
    arguments = ["demo", "--out", str(out), "--pipeline", str(pipeline), *extra]
    result = CliRunner().invoke(app, [*arguments, "--train-cases", "6", "--heldout-cases", "2"])
    return DemoRun(out, result.output, result.exit_code)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    folder = tmp_path_factory.mktemp("demo")
    return _demo(folder / "out", _quick_pipeline(folder))


def test_demo_runs_every_stage_and_writes_the_outputs(quick_demo: DemoRun) -> None:
    assert quick_demo.exit_code == 0, quick_demo.output
    work = quick_demo.out / "work"
    assert [load_record(work / stage).status for stage in STAGES] == ["done"] * len(STAGES)
    assert "Held-out phantoms" in quick_demo.output and "mlflow ui" in quick_demo.output

    manifest = work / "ingest" / "manifest.jsonl"
    records = read_manifest(manifest)
    assert [r.case_id for r in records] == [f"phantom_{i:03d}" for i in range(6)]
    assert sorted(r.split for r in records).count("val") == 1  # 17% of 6
    assert read_label_names(manifest) == PHANTOM_LABELS

    predictions = work / "predict" / "predictions"
    for case in ("heldout_000", "heldout_001"):
        labels = read_nifti(predictions / case / f"{case}.nii.gz")
        reference = read_nifti(quick_demo.out / "data" / "heldout" / "labels" / f"{case}.nii.gz")
        assert labels.same_grid(reference)
        seg = pydicom.dcmread(predictions / case / f"{case}_seg.dcm")
        assert seg.Modality == "SEG"
        assert {s.SegmentLabel for s in seg.SegmentSequence} <= set(PHANTOM_LABELS.values())
        volumes = json.loads((predictions / case / f"{case}.volumes.json").read_text())
        assert set(volumes) == {n for v, n in PHANTOM_LABELS.items() if v}
    with (predictions / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case_id"] for row in rows] == ["heldout_000", "heldout_001"]
    assert "liver_ml" in rows[0]
    summary = json.loads((work / "evaluate" / "report" / "summary.json").read_text())
    assert summary["cases"] == 2 and not summary["missing_prediction"]
    assert (work / "evaluate" / "report" / "report.html").is_file()


def test_demo_registers_the_model_and_nests_stage_runs(quick_demo: DemoRun) -> None:
    client = MlflowClient(quick_demo.tracking_uri)
    version = client.get_model_version_by_alias("medseg-demo", "champion")
    assert str(version.version) == "1"
    experiment = client.get_experiment_by_name("medseg-demo")
    parents = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`medseg.stage` = 'pipeline'"
    )
    assert len(parents) == 1
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'",
    )
    assert sorted(r.data.tags["medseg.stage"] for r in children) == sorted(STAGES)
    assert version.run_id in {r.info.run_id for r in children}


def test_ingested_organ_volumes_match_the_phantom_formulas(quick_demo: DemoRun) -> None:
    ingested = quick_demo.out / "work" / "ingest"
    seeds = np.random.SeedSequence(0).generate_state(6)  # how generate_demo_dataset seeds cases
    for record, case_seed in zip(read_manifest(ingested / "manifest.jsonl"), seeds, strict=True):
        image = read_nifti(ingested / record.image)
        label = read_nifti(ingested / record.label)
        assert image.same_grid(label) and record.modality == "CT"
        assert -20 < float(np.median(image.array[label.array == 1])) < 140  # liver HU
        anatomy = sample_anatomy(int(case_seed))
        for value in (1, 2, 3, 4):
            measured_ml = float((label.array == value).sum()) * label.voxel_volume_ml
            assert measured_ml == pytest.approx(anatomy.volume_ml(value), rel=0.05)


def test_second_demo_run_regenerates_nothing_and_skips_every_stage(
    quick_demo: DemoRun, tmp_path: Path
) -> None:
    series = quick_demo.out / "data" / "train" / "dicom" / "phantom_000"
    before = {p: p.stat().st_mtime_ns for p in series.iterdir()}
    again = _demo(quick_demo.out, _quick_pipeline(tmp_path))
    assert again.exit_code == 0, again.output
    for stage in STAGES:
        assert f"skipped {stage}" in " ".join(again.output.split())
    assert {p: p.stat().st_mtime_ns for p in series.iterdir()} == before


@pytest.mark.slow
def test_full_demo_reaches_dice_0_9_on_heldout_phantoms_in_under_10_minutes(
    tmp_path: Path,
) -> None:
    started = time.perf_counter()
    result = CliRunner().invoke(
        app,
        ["demo", "--out", str(tmp_path), "--pipeline", str(REPOSITORY / "pipelines/demo.yaml")],
    )
    minutes = (time.perf_counter() - started) / 60
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "work/evaluate/report/summary.json").read_text())
    print(f"demo: {minutes:.1f} min, mean Dice {summary['mean']['dice']:.4f}")
    assert summary["cases"] == 6
    assert summary["mean"]["dice"] >= 0.9
    assert minutes < 10
