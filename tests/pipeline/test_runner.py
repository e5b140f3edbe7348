"""Pipelines on phantom CT scans with a real MLflow store: stages, skipping, --from, --force,
resuming an interrupted training, failures and the parent/child runs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from medseg.errors import ConfigError
from medseg.io.nifti import read_nifti
from medseg.manifest import read_manifest
from medseg.pipeline.records import load_record
from medseg.pipeline.runner import PipelineReport, RunSelection, run_pipeline
from medseg.pipeline.spec import load_pipeline
from tests.tiny_dataset import CASES, write_tiny_dataset

STAGES = ["dataset", "plan", "preprocess", "train", "register", "predict", "evaluate"]

PIPELINE = """
name: tiny
experiment: tiny-pipeline
data_root: data
config_root: .
stages:
  - {stage: import-dataset, name: dataset, dataset: phantoms}
  - {stage: plan, config: plan.yaml}
  - {stage: preprocess, workers: 1}
  - {stage: train, config: train.yaml}
  - {stage: register, model_name: tiny-pipeline}
  - {stage: predict, split: val}
  - {stage: evaluate, split: val}
"""

TRAIN = """
epochs: 2
steps_per_epoch: 2
batch_size: 2
num_workers: 0
threads: 1
network: {deep_supervision: true, base_filters: 4}
validation: {max_cases: 1, overlay_pictures: 0}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A pipeline file, its configs and the five phantoms of the tiny dataset in a folder."""
    write_tiny_dataset(tmp_path / "data" / "phantoms")
    (tmp_path / "plan.yaml").write_text("patch_size_3d: [32, 32, 32]\n")
    (tmp_path / "train.yaml").write_text(TRAIN)
    (tmp_path / "tiny.yaml").write_text(PIPELINE)
    return tmp_path


def _run(project: Path, **selection) -> PipelineReport:
    return run_pipeline(
        load_pipeline(project / "tiny.yaml"),
        work_dir=project / "work",
        selection=RunSelection(**selection),
        tracking=f"sqlite:///{project / 'mlflow.db'}",
    )


def _statuses(report: PipelineReport) -> dict[str, str]:
    return {r.stage: "skipped" if r.stage in report.skipped else r.status for r in report.records}


def test_pipeline_runs_every_stage_then_skips_what_did_not_change(project: Path) -> None:
    first = _run(project)
    assert first.exit_code == 0, [(r.stage, r.error, r.problems) for r in first.records]
    assert _statuses(first) == dict.fromkeys(STAGES, "done")
    assert first.provided("model_uri") == "models:/tiny-pipeline/1"
    manifest = read_manifest(first.provided("manifest"))
    val_cases = sorted(p.name for p in (project / "work" / "predict" / "scans").iterdir())
    assert val_cases == [f"{r.case_id}.nii.gz" for r in manifest if r.split == "val"]
    assert len(val_cases) == 1
    case = val_cases[0].removesuffix(".nii.gz")
    assert case in CASES
    prediction = read_nifti(project / "work" / "predict" / "predictions" / case / val_cases[0])
    images = project / "data" / "phantoms" / "images"
    assert prediction.same_grid(read_nifti(images / val_cases[0]))
    evaluation = json.loads((project / "work" / "evaluate" / "report" / "summary.json").read_text())
    assert evaluation["cases"] == 1 and 0.0 <= evaluation["mean"]["dice"] <= 1.0

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    children = client.search_runs(
        [client.get_experiment_by_name("tiny-pipeline").experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{first.run_id}'",
    )
    assert sorted(run.data.tags["medseg.stage"] for run in children) == sorted(
        ["import-dataset", "plan", "preprocess", "train", "register", "predict", "evaluate"]
    )
    evaluate_run = next(r for r in children if r.data.tags["medseg.stage"] == "evaluate")
    assert evaluate_run.data.metrics["eval_mean_dice"] == pytest.approx(evaluation["mean"]["dice"])

    again = _run(project)
    assert _statuses(again) == dict.fromkeys(STAGES, "skipped")
    assert len(client.search_model_versions("name = 'tiny-pipeline'")) == 1  # nothing retrained

    (project / "train.yaml").write_text(TRAIN.replace("epochs: 2", "epochs: 1"))
    changed = _run(project)
    assert _statuses(changed) == {
        **dict.fromkeys(["dataset", "plan", "preprocess"], "skipped"),
        **dict.fromkeys(["train", "register", "predict", "evaluate"], "done"),
    }
    assert changed.provided("model_uri") == "models:/tiny-pipeline/2"

    from_predict = _run(project, from_stage="predict")
    assert _statuses(from_predict) == {
        **dict.fromkeys(STAGES[:5], "skipped"),
        **dict.fromkeys(["predict", "evaluate"], "done"),
    }
    only_plan = _run(project, force=True, to_stage="plan")
    assert _statuses(only_plan) == {"dataset": "done", "plan": "done"}


def test_interrupted_training_resumes_in_the_same_run(project: Path) -> None:
    first = _run(project, to_stage="train")
    train_record = load_record(project / "work" / "train")
    assert train_record is not None and train_record.status == "done"
    # What a kill after the last checkpoint leaves behind: a 'running' record.
    train_record.status = "running"
    train_record.save(project / "work" / "train")
    resumed = _run(project, to_stage="train")
    assert _statuses(resumed)["train"] == "done"
    record = load_record(project / "work" / "train")
    assert record.summary["resumed"] is True
    assert record.run_id == first.records[-1].run_id  # logged into the interrupted run


def test_failed_stage_stops_the_pipeline_and_a_rerun_continues_there(project: Path) -> None:
    text = PIPELINE.replace("{stage: evaluate, split: val}", "{stage: evaluate, references: gone}")
    (project / "tiny.yaml").write_text(text)
    (project / "data" / "gone").mkdir()  # there (else refused up front), but no labels yet
    failed = _run(project)
    assert failed.exit_code == 1
    assert failed.failed_stage.stage == "evaluate"
    assert "gone: no label maps" in failed.failed_stage.error
    for record in read_manifest(failed.provided("manifest")):
        if record.split == "val":  # the cases predict segmented
            shutil.copy(project / "data" / record.label, project / "data" / "gone")
    fixed = _run(project)
    assert fixed.exit_code == 0, fixed.records[-1].problems
    assert _statuses(fixed) == {**dict.fromkeys(STAGES[:-1], "skipped"), "evaluate": "done"}


def test_a_stage_needing_what_no_earlier_stage_gives_fails_clearly(project: Path) -> None:
    (project / "tiny.yaml").write_text(
        "name: bad\ndata_root: data\nconfig_root: .\nstages:\n  - {stage: plan}\n"
    )
    report = _run(project)
    assert report.exit_code == 1
    assert "needs ['manifest']" in report.failed_stage.error


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nstages: []\n", "'stages' must be a non-empty list"),
        ("name: x\nstagez: []\n", "unknown key(s) ['stagez']"),
        ("name: x\nstages: {plan: {}}\n", "'stages' must be a non-empty list"),
        ("name: [x]\nstages:\n  - {stage: plan}\n", "name: Input should be a valid string"),
        ("name: x\nstages:\n  - {stage: fly}\n", "unknown stage kind 'fly'"),
        ("name: x\nstages:\n  - {stage: plan, colour: red}\n", "stage 1 (plan): colour"),
        (
            "name: x\nstages:\n  - {stage: plan}\n  - {stage: plan}\n",
            "repeated: ['plan']",
        ),
        (
            "name: x\nstages:\n  - {stage: predict, input: a, split: val}\n",
            "exactly one of a folder under the data root and 'split'",
        ),
    ],
)
def test_invalid_pipeline_files_name_the_file_and_the_problem(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


def test_overrides_set_stage_options_and_bad_ones_are_named(project: Path) -> None:
    spec = load_pipeline(project / "tiny.yaml", ["train.max_minutes=2.5", "predict.mirror=true"])
    options = {stage.name: stage.options for stage in spec.stages}
    assert options["train"].max_minutes == 2.5 and options["predict"].mirror is True
    for override, message in [
        ("trian.epochs=1", "no stage named 'trian'"),
        ("train=1", "expected STAGE.KEY=VALUE"),
        ("train.colour=red", "train): colour"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_pipeline(project / "tiny.yaml", [override])


def test_shipped_pipelines_parse() -> None:
    root = Path(__file__).resolve().parents[2]
    for path in sorted((root / "pipelines").glob("*.yaml")):
        spec = load_pipeline(path)
        assert spec.stages and spec.config_root == root, path
        for stage in spec.stages:
            for key in ("config", "manifest"):
                if relative := getattr(stage.options, key, None):
                    assert (root / relative).is_file(), (path, relative)
