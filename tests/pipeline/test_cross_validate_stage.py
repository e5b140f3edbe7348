"""The ``cross_validate`` and ``select`` pipeline stages: folds of the pipeline's own plan,
nested MLflow runs (pipeline -> cross-validation -> one run per fold), the chosen ensemble
registered and used by the predict stage, everything skipped when nothing changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from medseg.pipeline.runner import RunSelection, run_pipeline
from medseg.pipeline.spec import load_pipeline
from tests.pipeline.test_runner import TRAIN
from tests.tiny_dataset import CASES, write_tiny_dataset

PIPELINE = """
name: tiny-cv
experiment: tiny-cv
data_root: data
config_root: .
stages:
  - {stage: import-dataset, name: dataset, dataset: phantoms, test_fraction: 0.2}
  - {stage: plan, config: plan.yaml}
  - {stage: preprocess, workers: 1}
  - {stage: cross_validate, name: cv-3d, config: train.yaml, folds: 2}
  - {stage: cross_validate, name: cv-2d, config: train-2d.yaml, folds: 2}
  - {stage: select, configurations: [cv-3d, cv-2d], model_name: tiny-auto}
  - {stage: predict, split: test}
  - {stage: evaluate, split: test}
"""


@pytest.mark.slow  # minutes of commands: the serial slow suite, so make test stays < 15 min
def test_cross_validation_stage_trains_every_fold_once(tmp_path: Path) -> None:
    write_tiny_dataset(tmp_path / "data" / "phantoms")
    (tmp_path / "plan.yaml").write_text("patch_size_3d: [32, 32, 32]\n")
    (tmp_path / "train.yaml").write_text(TRAIN)
    (tmp_path / "train-2d.yaml").write_text(TRAIN + "configuration: 2d\n")
    (tmp_path / "cv.yaml").write_text(PIPELINE)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def run():
        return run_pipeline(
            load_pipeline(tmp_path / "cv.yaml"),
            work_dir=tmp_path / "work",
            selection=RunSelection(),
            tracking=tracking,
        )

    first = run()
    assert first.exit_code == 0, [(r.stage, r.error) for r in first.records]
    test_case = next(
        json.loads(line)["case_id"]
        for line in first.provided("manifest").read_text().splitlines()
        if json.loads(line)["split"] == "test"
    )
    for name in ("cv-3d", "cv-2d"):  # every non-test case predicted out of fold once
        oof = sorted(p.stem for p in (tmp_path / "work" / name).glob("fold_*/oof/*.npy"))
        assert oof == [case for case in CASES if case != test_case]
    assert (tmp_path / "work/plan/splits.json").exists()  # stored with the plan

    selection = json.loads((tmp_path / "work/select/selection.json").read_text())
    assert first.provided("model_uri") == "models:/tiny-auto/1"
    assert first.provided("selected_cv_mean_dice") == selection["cv_mean_dice"]
    predicted = tmp_path / "work/predict/predictions" / test_case / f"{test_case}.nii.gz"
    assert predicted.exists()  # the registered ensemble segmented the unseen case
    summary = (tmp_path / "work/predict/predictions/summary.csv").read_text().splitlines()
    assert summary[1].startswith(f"{test_case},done,") and "models:/tiny-auto/1" in summary[1]

    client = MlflowClient(tracking)
    parent = client.get_run(
        json.loads((tmp_path / "work/cv-3d/cross_validation.json").read_text())["run_id"]
    )
    assert parent.data.tags["mlflow.parentRunId"] == first.run_id
    folds = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert sorted(run.data.params["fold"] for run in folds) == ["0", "1"]

    again = run()
    assert again.exit_code == 0
    assert {"cv-3d", "cv-2d", "select", "predict", "evaluate"} <= set(again.skipped)
