"""The ``cross_validate`` pipeline stage: folds of the pipeline's own plan, nested MLflow runs
(pipeline -> cross-validation -> one run per fold), skipped when nothing changed."""

from __future__ import annotations

import json
from pathlib import Path

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
  - {stage: import-dataset, name: dataset, dataset: phantoms}
  - {stage: plan, config: plan.yaml}
  - {stage: preprocess, workers: 1}
  - {stage: cross_validate, config: train.yaml, folds: 2}
"""


def test_cross_validation_stage_trains_every_fold_once(tmp_path: Path) -> None:
    write_tiny_dataset(tmp_path / "data" / "phantoms")
    (tmp_path / "plan.yaml").write_text("patch_size_3d: [32, 32, 32]\n")
    (tmp_path / "train.yaml").write_text(TRAIN)
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
    summary = json.loads((tmp_path / "work/cross_validate/summary.json").read_text())
    assert first.provided("cv_mean_dice") == summary["cv_mean_dice"]
    oof = sorted(p.stem for p in (tmp_path / "work/cross_validate").glob("fold_*/oof/*.npy"))
    assert oof == CASES  # the dataset stage's val split takes part: only test cases do not
    assert (tmp_path / "work/plan/splits.json").exists()  # stored with the plan

    client = MlflowClient(tracking)
    parent = client.get_run(first.provided("cv_run_id"))
    assert parent.data.tags["mlflow.parentRunId"] == first.run_id
    folds = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert sorted(run.data.params["fold"] for run in folds) == ["0", "1"]

    again = run()
    assert again.exit_code == 0 and "cross_validate" in again.skipped
