"""Cross-validation trains every fold under one MLflow parent run, keeps float16 out-of-fold
probabilities of every case once, reports the CV Dice they give, and resumes per fold."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from medseg.errors import ConfigError
from medseg.evaluate.metrics import confusion_matrix, dice_from_confusion
from medseg.preprocess.cache import load_cache
from medseg.train.cross_validation import (
    FOLD_RECORD,
    cross_validate,
    fold_folder,
    out_of_fold_path,
)
from medseg.train.folds import load_or_make_folds
from tests.faults.commands import run_medseg, said
from tests.faults.processes import MedsegProcess
from tests.tiny_dataset import CASES, TinyDataset, tiny_config
from tests.train.test_resume_and_ddp import _free_port

FOLDS = 2
TINY = {"epochs": 1, "steps_per_epoch": 2, "validation": {"max_cases": 1, "overlay_pictures": 0}}


def _run(dataset: TinyDataset, tmp_path: Path, **overrides: object):
    folds = load_or_make_folds(tmp_path / "plan.json", dataset.manifest, folds=FOLDS)
    return folds, cross_validate(
        folds=folds,
        manifest_path=dataset.manifest,
        plan=dataset.plan,
        cache_dir=dataset.cache,
        config=tiny_config(**(TINY | overrides)),
        run_dir=tmp_path / "cv",
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
    )


def test_every_fold_trains_in_a_child_run_and_the_cv_dice_is_that_of_the_oof_predictions(
    tiny_dataset: TinyDataset, tmp_path: Path
) -> None:
    folds, result = _run(tiny_dataset, tmp_path)
    assert result.trained == (0, 1)
    # every case has exactly one out-of-fold prediction, from the fold that held it out
    oof = sorted(p.stem for p in (tmp_path / "cv").glob("fold_*/oof/*.npy"))
    assert oof == CASES
    num_classes = tiny_dataset.num_classes
    total = np.zeros((num_classes, num_classes), np.int64)
    for k, fold in enumerate(folds):
        for case in load_cache(tiny_dataset.cache, fold.val):
            probabilities = np.load(out_of_fold_path(tmp_path / "cv", k, case.case_id))
            assert probabilities.dtype == np.float16
            assert probabilities.shape == (num_classes, *case.image.shape[1:])  # network grid
            assert np.allclose(probabilities.astype(np.float32).sum(0), 1.0, atol=5e-3)
            total += confusion_matrix(probabilities.argmax(0), case.label, num_classes)
    dice = dice_from_confusion(total)
    expected = {
        name: float(dice[label]) for label, name in tiny_dataset.plan.label_names.items() if label
    }
    assert result.dice == pytest.approx(expected, nan_ok=True)
    summary = json.loads((tmp_path / "cv/summary.json").read_text())
    assert summary["cv_dice"] == pytest.approx(expected, nan_ok=True)

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["cv_mean_dice"] == pytest.approx(result.mean_dice)
    assert parent.data.metrics["cv_dice_liver"] == pytest.approx(expected["liver"])
    children = [client.get_run(record.run_id) for record in result.folds]
    assert [c.data.tags["mlflow.parentRunId"] for c in children] == [result.run_id] * FOLDS
    assert [c.data.params["fold"] for c in children] == ["0", "1"]
    assert all(c.info.status == "FINISHED" for c in children)


def test_finished_folds_are_skipped_and_another_config_is_refused(
    tiny_dataset: TinyDataset, tmp_path: Path
) -> None:
    _, first = _run(tiny_dataset, tmp_path)
    (fold_folder(tmp_path / "cv", 1) / FOLD_RECORD).unlink()  # as if fold 1 had been killed
    _, again = _run(tiny_dataset, tmp_path)
    assert again.trained == (1,)
    assert again.run_id == first.run_id  # the same parent run, continued
    assert again.folds[0] == first.folds[0]
    with pytest.raises(ConfigError, match="cv: holds a cross-validation with another training"):
        _run(tiny_dataset, tmp_path, learning_rate=0.5)


@pytest.mark.slow  # minutes of commands: the serial slow suite, so make test stays < 15 min
def test_a_killed_cross_validation_continues_its_fold_and_skips_the_finished_ones(
    tiny_dataset: TinyDataset, tmp_path: Path
) -> None:
    config = tmp_path / "train.yaml"
    slow = {"epochs": 2, "steps_per_epoch": 10, "checkpoint_every_steps": 2}  # stopped in fold 1
    config.write_text(yaml.safe_dump(tiny_config(**(TINY | slow)).model_dump(exclude_unset=True)))
    command = [
        "cross-validate",
        *("--manifest", str(tiny_dataset.manifest), "--plan", str(tiny_dataset.plan_path)),
        *("--cache", str(tiny_dataset.cache), "--config", str(config)),
        *("--folds", str(FOLDS), "--run-dir", str(tmp_path / "cv")),
        *("--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"),
    ]
    fold_1 = fold_folder(tmp_path / "cv", 1) / "checkpoints/last.pt"
    with MedsegProcess.start(command, tmp_path / "cv.log", env={"OMP_NUM_THREADS": "1"}) as run:
        run.wait_for(fold_1.exists, "fold 1 wrote a checkpoint")
        run.signal(signal.SIGTERM)
        code, _ = run.wait_exit()
        assert code == 143, run.output()
    assert (fold_folder(tmp_path / "cv", 0) / FOLD_RECORD).exists()
    assert not (fold_folder(tmp_path / "cv", 1) / FOLD_RECORD).exists()
    stopped = torch.load(fold_1, weights_only=False)["state"]
    assert 2 <= stopped["step"] < 20
    with MedsegProcess.start(command, tmp_path / "again.log", env={"OMP_NUM_THREADS": "1"}) as run:
        code, _ = run.wait_exit(timeout=600)
        assert code == 0, run.output()
    assert "1 trained now, 1 finished earlier" in run.output()
    finished = json.loads((fold_folder(tmp_path / "cv", 1) / FOLD_RECORD).read_text())
    assert finished["run_id"] == stopped["run_id"]  # fold 1's run continued, not restarted
    history = json.loads((fold_folder(tmp_path / "cv", 1) / "history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2]


def test_one_fold_trained_alone_is_skipped_by_the_cross_validation(
    tiny_dataset: TinyDataset, tmp_path: Path
) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(tiny_config(**TINY).model_dump(exclude_unset=True)))
    common = [
        *("--manifest", tiny_dataset.manifest, "--plan", tiny_dataset.plan_path),
        *("--cache", tiny_dataset.cache, "--config", config, "--run-dir", tmp_path / "cv"),
        *("--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--folds", FOLDS),
    ]
    fold = run_medseg("train", *common, "--fold", 1)
    assert fold.exit_code == 0, fold.output
    assert "Fold 1 of 2 trained" in said(fold)
    assert (fold_folder(tmp_path / "cv", 1) / FOLD_RECORD).exists()
    everything = run_medseg("cross-validate", *common)
    assert everything.exit_code == 0, everything.output
    assert "1 trained now, 1 finished earlier" in said(everything)
    beyond = run_medseg("train", *common, "--fold", FOLDS)
    assert beyond.exit_code == 2
    assert beyond.output.strip() == "error: --fold: 2 is not a fold of 0..1"
    int8 = run_medseg("train", *common, "--fold", 0, "--int8")
    assert int8.exit_code == 2
    assert int8.output.strip() == (
        "error: medseg train --int8: the folds' ensemble (medseg ensemble) runs at fp32 or bf16, "
        "not int8"
    )


@pytest.mark.slow  # minutes of commands: the serial slow suite, so make test stays < 15 min
def test_a_fold_trains_under_torchrun_and_rank_0_alone_records_it(
    tiny_dataset: TinyDataset, tmp_path: Path
) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(tiny_config(**TINY).model_dump(exclude_unset=True)))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "medseg",
        "train", "--manifest", str(tiny_dataset.manifest), "--plan", str(tiny_dataset.plan_path),
        "--cache", str(tiny_dataset.cache), "--config", str(config), "--fold", "0",
        "--folds", str(FOLDS), "--run-dir", str(tmp_path / "cv"),
        "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Fold 0 of 2 trained") == 1  # rank 0 reports, once
    folder = fold_folder(tmp_path / "cv", 0)
    checksums = json.loads((folder / "replica_checksums.json").read_text())
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    record = json.loads((folder / FOLD_RECORD).read_text())
    assert sorted(p.stem for p in (folder / "oof").glob("*.npy")) == record["val"]


def test_cross_validate_under_torchrun_is_refused(
    tiny_dataset: TinyDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="under torchrun, train each fold with medseg train"):
        _run(tiny_dataset, tmp_path)


def test_a_cross_validation_is_not_quantized(tiny_dataset: TinyDataset, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"int8: the folds' ensemble .* runs at fp32 or bf16"):
        _run(tiny_dataset, tmp_path, int8=True)
    assert not (tmp_path / "cv").exists()  # refused before anything was claimed or trained
