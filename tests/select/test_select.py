"""``medseg select`` on two real cross-validations (3D and 2D) of the phantom dataset: every
candidate's CV Dice is what its out-of-fold probabilities give, the best is chosen, and the
decision is stored and logged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import Result

from medseg.errors import ConfigError
from medseg.evaluate.metrics import confusion_matrix, dice_from_confusion, mean_foreground
from medseg.infer.postprocess import PostprocessingRules
from medseg.infer.predictor import load_packaged_model
from medseg.preprocess.cache import load_cache
from medseg.select.selection import select
from medseg.train.cross_validation import FOLD_RECORD, cross_validate, fold_folder
from medseg.train.folds import load_or_make_folds
from tests.faults.commands import run_medseg, said
from tests.tiny_dataset import CASES, TinyDataset, tiny_config

TINY = {"epochs": 1, "steps_per_epoch": 3, "validation": {"max_cases": 1, "overlay_pictures": 0}}


@pytest.fixture(scope="module")
def two_configurations(
    tiny_dataset: TinyDataset, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """Folders ``3d`` and ``2d``: both configurations cross-validated on 2 folds."""
    root = tmp_path_factory.mktemp("select")
    tracking = f"sqlite:///{root}/mlflow.db"
    folds = load_or_make_folds(root / "plan.json", tiny_dataset.manifest, folds=2)
    for configuration in ("3d", "2d"):
        cross_validate(
            folds=folds,
            manifest_path=tiny_dataset.manifest,
            plan=tiny_dataset.plan,
            cache_dir=tiny_dataset.cache,
            config=tiny_config(**TINY, configuration=configuration),
            run_dir=root / configuration,
            tracking_uri=tracking,
        )
    return root, tracking


def _oof(folder: Path, case_id: str) -> np.ndarray:
    [path] = folder.glob(f"fold_*/oof/{case_id}.npy")
    return np.load(path).astype(np.float32)


def test_every_candidate_scores_what_its_out_of_fold_probabilities_give(
    tiny_dataset: TinyDataset, two_configurations: tuple[Path, str]
) -> None:
    root, _ = two_configurations
    selection = select(
        [root / "3d", root / "2d"], plan=tiny_dataset.plan, cache_dir=tiny_dataset.cache
    )
    assert sorted(c.name for c in selection.candidates) == ["2d", "3d", "3d + 2d"]
    k = tiny_dataset.num_classes
    for candidate in selection.candidates:
        total = np.zeros((k, k), np.int64)
        for case in load_cache(tiny_dataset.cache, CASES):
            mean = sum(_oof(root / name, case.case_id) for name in candidate.members)
            total += confusion_matrix(np.asarray(mean).argmax(0), case.label, k)
        assert candidate.mean_dice == pytest.approx(mean_foreground(dice_from_confusion(total)))
    for name in ("3d", "2d"):  # a configuration alone scores its CV Dice
        [alone] = [c for c in selection.candidates if c.members == (name,)]
        summary = json.loads((root / name / "summary.json").read_text())
        assert alone.mean_dice == pytest.approx(summary["cv_mean_dice"])
    means = [c.mean_dice for c in selection.candidates]
    assert means == sorted(means, reverse=True)  # best first
    assert selection.postprocessed_mean_dice >= selection.best.mean_dice - 1e-12


def _select_command(
    dataset: TinyDataset, configurations: tuple[Path, str], out: Path, *extra: object
) -> Result:
    """``medseg select 3d 2d`` on the two cross-validations, writing into ``out``."""
    root, tracking = configurations
    return run_medseg(
        "select", root / "3d", root / "2d", "--plan", dataset.plan_path, "--cache", dataset.cache,
        "--out", out, "--tracking-uri", tracking, *extra,
    )  # fmt: skip


def test_the_command_stores_and_logs_the_decision(
    tiny_dataset: TinyDataset, two_configurations: tuple[Path, str], tmp_path: Path
) -> None:
    tracking = two_configurations[1]
    result = _select_command(tiny_dataset, two_configurations, tmp_path / "choice")
    assert result.exit_code == 0, result.output
    stored = json.loads((tmp_path / "choice/selection.json").read_text())
    assert f"Chosen: {' + '.join(stored['chosen'])}" in said(result)
    assert stored["candidates"][0]["members"] == stored["chosen"]
    assert set(stored["postprocessing"]) == {
        "liver",
        "spleen",
        "kidney_left",
        "kidney_right",
        "spine",
    }
    client = MlflowClient(tracking)
    [run] = client.search_runs(
        [client.get_experiment_by_name("medseg").experiment_id],
        filter_string="tags.`medseg.stage` = 'select'",
    )
    assert run.data.metrics["selected_cv_mean_dice"] == pytest.approx(stored["cv_mean_dice"])
    assert run.data.metrics["cv_mean_dice/3d_and_2d"] == pytest.approx(
        next(c["cv_mean_dice"] for c in stored["candidates"] if len(c["members"]) == 2)
    )


def test_unfinished_or_incomparable_folders_are_refused(
    tiny_dataset: TinyDataset, two_configurations: tuple[Path, str], tmp_path: Path
) -> None:
    root, _ = two_configurations
    unfinished = tmp_path / "unfinished"
    shutil.copytree(root / "3d", unfinished)
    (fold_folder(unfinished, 1) / FOLD_RECORD).unlink()
    with pytest.raises(ConfigError, match=r"unfinished: folds \[1\] are not finished"):
        select([unfinished], plan=tiny_dataset.plan, cache_dir=tiny_dataset.cache)
    other = tmp_path / "other"
    shutil.copytree(root / "2d", other)
    record = json.loads((other / "cross_validation.json").read_text())
    (other / "cross_validation.json").write_text(json.dumps(record | {"folds_sha256": "0" * 64}))
    with pytest.raises(ConfigError, match="other: trained with another folds"):
        select([root / "3d", other], plan=tiny_dataset.plan, cache_dir=tiny_dataset.cache)
    result = run_medseg("select", tmp_path, "--plan", tiny_dataset.plan_path)
    assert result.exit_code == 2
    assert said(result).startswith(f"error: {tmp_path}: not a cross-validation folder")


def test_the_chosen_folds_become_one_registered_model_that_predict_uses(
    tiny_dataset: TinyDataset, two_configurations: tuple[Path, str], tmp_path: Path
) -> None:
    tracking = two_configurations[1]
    result = _select_command(
        tiny_dataset, two_configurations, tmp_path / "choice",
        "--register", "tiny-selected", "--alias", "champion",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stored = json.loads((tmp_path / "choice/selection.json").read_text())
    networks = 2 * len(stored["chosen"])  # every fold of every chosen configuration
    assert (
        f"registered {networks} fold models as one ensemble: models:/tiny-selected/1 "
        "(alias champion)" in said(result)
    )
    model = load_packaged_model("models:/tiny-selected@champion", tracking_uri=tracking)
    assert sorted(m.configuration for m in model.members) == sorted(stored["chosen"] * 2)
    assert model.postprocessing is not None and model.postprocessing["chosen"] == stored["chosen"]
    assert model.rules == PostprocessingRules.model_validate(stored["rules"])
    scan = tiny_dataset.data / "images" / f"{CASES[0]}.nii.gz"
    predicted = run_medseg(
        "predict", scan, "--model", "models:/tiny-selected@champion", "--out", tmp_path / "out",
        "--tracking-uri", tracking,
    )  # fmt: skip
    assert predicted.exit_code == 0, predicted.output
    assert f"an ensemble of {networks} members" in said(predicted)
