"""Region-based datasets through the pipeline: the data stages keep the region declarations of
a label-names file, training logs the loss it trains, and the evaluate stage scores each region
(report, MLflow) exactly as ``medseg evaluate --labels dataset.json`` does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from medseg.datasets import import_dataset
from medseg.evaluate.pairing import pair_label_maps
from medseg.evaluate.stage import evaluate_pairing
from medseg.manifest import load_label_names, load_regions, read_label_names, read_regions
from medseg.pipeline.runner import PipelineReport, RunSelection, run_pipeline
from medseg.pipeline.spec import load_pipeline
from tests.phantoms import write_nested_regions_dataset

PIPELINE = """
name: regions
experiment: regions-pipeline
data_root: data
config_root: .
stages:
  - {stage: import-dataset, name: dataset, manifest: data/nested.jsonl}
  - {stage: plan, config: plan.yaml}
  - {stage: preprocess, workers: 1}
  - {stage: train, config: train.yaml}
  - {stage: register, model_name: nested-pipeline}
  - {stage: predict, split: val}
  - {stage: evaluate, split: val}
"""

TRAIN = """
epochs: 2
steps_per_epoch: 3
batch_size: 2
num_workers: 0
threads: 1
learning_rate: 0.01
network: {base_filters: 4}
validation: {max_cases: 1, overlay_pictures: 0}
"""

REGIONS = ["whole", "core", "enhancing"]


def _run(project: Path, pipeline: str) -> PipelineReport:
    (project / "pipeline.yaml").write_text(pipeline)
    report = run_pipeline(
        load_pipeline(project / "pipeline.yaml"),
        work_dir=project / "work",
        selection=RunSelection(),
        tracking=f"sqlite:///{project / 'mlflow.db'}",
    )
    assert report.exit_code == 0, [(r.stage, r.error, r.problems) for r in report.records]
    return report


def test_an_ingest_stage_keeps_the_regions_of_its_label_names_file(tmp_path: Path) -> None:
    dataset = tmp_path / "data" / "nested"
    write_nested_regions_dataset(dataset, [0])
    pipeline = (
        "name: ingest\nexperiment: regions-ingest\ndata_root: data\nconfig_root: .\nstages:\n"
        "  - {stage: ingest, input: nested/imagesTr, workers: 1, "
        "label_names: nested/dataset.json}\n"
    )
    manifest = _run(tmp_path, pipeline).provided("manifest")
    declared = load_regions(dataset / "dataset.json")
    assert declared is not None and read_regions(manifest) == declared
    assert read_label_names(manifest) == load_label_names(dataset / "dataset.json")


def test_a_region_pipeline_trains_dice_bce_and_evaluates_every_region(tmp_path: Path) -> None:
    dataset = tmp_path / "data" / "nested"
    write_nested_regions_dataset(dataset, range(5))
    # a shipped manifest: paths relative to the data root, two cases for validation
    import_dataset(dataset, manifest_path=tmp_path / "data" / "nested.jsonl", val_fraction=0.4)
    (tmp_path / "plan.yaml").write_text("patch_size_3d: [32, 32, 32]\n")
    (tmp_path / "train.yaml").write_text(TRAIN)
    report = _run(tmp_path, PIPELINE)
    assert read_regions(report.provided("manifest")) == load_regions(dataset / "dataset.json")

    folder = tmp_path / "work" / "evaluate"
    summary = json.loads((folder / "report" / "summary.json").read_text())
    assert summary["cases"] == 2 and sorted(summary["regions"]) == sorted(REGIONS)
    labels = dataset / "dataset.json"
    independent = evaluate_pairing(
        pair_label_maps(report.provided("predictions"), folder / "references"),
        label_names=load_label_names(labels),
        regions=load_regions(labels),
    )
    expected = {name: values["dice"] for name, values in independent.region_means().items()}
    found = {name: summary["regions"][name]["dice"] for name in REGIONS}
    assert found == pytest.approx(expected, nan_ok=True)
    page = (folder / "report" / "report.html").read_text()
    assert "<h2>Regions</h2>" in page and all(f"<td>{n}</td>" in page for n in REGIONS)

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("regions-pipeline")
    assert experiment is not None
    runs = {
        run.data.tags["medseg.stage"]: run
        for run in client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{report.run_id}'",
        )
    }
    loss_params = [k for k in runs["train"].data.params if k.startswith("config.loss")]
    assert loss_params == ["config.loss.dice_bce"]
    logged = runs["evaluate"].data.metrics
    assert logged["eval_region_mean_dice"] == pytest.approx(summary["region_mean_dice"])
    assert logged["eval_dice_region_core"] == pytest.approx(summary["regions"]["core"]["dice"])
