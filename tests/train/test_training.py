"""Training end to end on a real MLflow server: metrics, checkpoints, registry, aliases; and a
short training that really learns the phantoms."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from medseg.errors import MedsegError
from medseg.manifest import read_manifest
from medseg.models import build_network
from medseg.preprocess.cache import LoadedCase, load_cache
from medseg.tracking.packaging import load_segmentation_model
from medseg.train.checkpoint import TrainingState, load_checkpoint
from medseg.train.loop import poly_learning_rate, train, training_progress
from medseg.train.validation import validate
from tests.mlflow_server import mlflow_server  # noqa: F401
from tests.tiny_dataset import LEARNT_DICE, TinyDataset, learning_config, tiny_config


def _dice_by_name(
    network: torch.nn.Module, dataset: TinyDataset, cases: list[LoadedCase]
) -> dict[str, float]:
    """Dice per structure name of ``network`` on preprocessed ``cases``."""
    scores = validate(
        network,
        cases,
        patch_size=dataset.plan.configurations["3d"].patch_size,
        num_classes=dataset.num_classes,
        device=torch.device("cpu"),
    ).dice
    return {dataset.plan.label_names[value]: score for value, score in scores.items()}


def test_a_short_training_learns_is_tracked_registered_and_loadable_by_alias(
    tiny_dataset: TinyDataset,
    tmp_path: Path,
    mlflow_server: str,  # noqa: F811
) -> None:
    config = learning_config(
        registered_model_name="phantoms-tiny",
        experiment="test-training",
        validation={"max_cases": 1, "overlay_pictures": 1},  # every epoch
    )
    result = train(
        manifest_path=tiny_dataset.manifest,
        plan=tiny_dataset.plan,
        cache_dir=tiny_dataset.cache,
        config=config,
        run_dir=tmp_path / "run",
        tracking_uri=mlflow_server,
    )
    assert result.state.step == 60 and result.state.epoch == 2 and result.stopped_by == "epochs"
    # it learnt: the large structures of its training phantoms, which the untrained network misses
    arguments = torch.load(result.best_checkpoint, weights_only=False)["extra"]["network_arguments"]
    network = build_network(**arguments)
    load_checkpoint(result.best_checkpoint, network=network)
    training_cases = [r.case_id for r in read_manifest(tiny_dataset.manifest) if r.split == "train"]
    cases = load_cache(tiny_dataset.cache, training_cases[:2])
    trained = _dice_by_name(network, tiny_dataset, cases)
    torch.manual_seed(0)
    untrained = _dice_by_name(build_network(**arguments), tiny_dataset, cases)
    assert all(untrained[name] < 0.2 for name in LEARNT_DICE), untrained
    assert all(trained[name] >= LEARNT_DICE[name] for name in LEARNT_DICE), trained

    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(result.run_id)
    structures = [name for value, name in tiny_dataset.plan.label_names.items() if value]
    for metric in (
        "train_loss",
        "learning_rate",
        "samples_per_second",
        "val_mean_dice",
        *(f"val_dice_{name}" for name in structures),
    ):
        history = client.get_metric_history(result.run_id, metric)
        assert [m.step for m in history] == [1, 2], metric
    best = max(m.value for m in client.get_metric_history(result.run_id, "val_mean_dice"))
    assert result.best_mean_dice == pytest.approx(best)  # the best checkpoint is the best epoch
    assert run.data.params["config.epochs"] == "2"
    assert run.data.tags["manifest.sha256"] and run.data.tags["git.commit"]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"curves", "validation", "config"} <= artifacts  # MLflow 3 stores models apart
    version = client.get_model_version_by_alias("phantoms-tiny", "champion")
    assert version.version == result.model_version == "1"
    assert client.get_model_version_by_alias("phantoms-tiny", "candidate").version == "1"
    # the model loaded back by alias predicts what the trained network predicts in memory
    mlflow.set_tracking_uri(mlflow_server)
    loaded = mlflow.pyfunc.load_model("models:/phantoms-tiny@champion")
    sample = np.random.default_rng(0).normal(size=(1, 1, 32, 32, 32)).astype(np.float32)
    network.eval()
    with torch.no_grad():
        expected = torch.softmax(network(torch.from_numpy(sample)), 1).numpy()
    assert np.allclose(loaded.predict(sample), expected, atol=1e-5)
    unwrapped = load_segmentation_model(
        "models:/phantoms-tiny@champion", tracking_uri=mlflow_server
    )
    assert unwrapped.plan["target_spacing"] == tiny_dataset.plan.target_spacing


def test_time_budget_stops_training_early(tiny_dataset: TinyDataset, tmp_path: Path) -> None:
    config = tiny_config(epochs=50, max_minutes=0.0005)
    result = train(
        manifest_path=tiny_dataset.manifest,
        plan=tiny_dataset.plan,
        cache_dir=tiny_dataset.cache,
        config=config,
        run_dir=tmp_path / "run",
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
    )
    assert result.stopped_by == "time budget"
    assert result.state.epoch == 1 and result.state.step == 1
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 1 and "val_mean_dice" in history[0]


@pytest.mark.parametrize(
    ("step", "elapsed", "budget", "expected"),
    [
        (0, 0.0, None, 0.01),
        (50, 0.0, None, 0.01 * 0.5**0.9),
        (99, 0.0, None, 0.01 * 0.01**0.9),
        (10, 45.0, 60.0, 0.01 * 0.25**0.9),  # three quarters of the time budget used
        (80, 6.0, 60.0, 0.01 * 0.2**0.9),  # steps are further along than time
    ],
)
def test_learning_rate_decays_with_steps_or_time_budget(
    step: int, elapsed: float, budget: float | None, expected: float
) -> None:
    state = TrainingState(step=step, elapsed_seconds=elapsed)
    progress = training_progress(state, total_steps=100, budget_seconds=budget)
    assert poly_learning_rate(0.01, progress) == pytest.approx(expected)


def test_border_loss_without_cached_weights_is_a_clear_error(
    tiny_dataset: TinyDataset, tmp_path: Path
) -> None:
    config = tiny_config(loss={"dice_ce": 1.0, "border_ce": 0.5})
    with pytest.raises(MedsegError, match=r"border_weights\.enabled: false"):
        train(
            manifest_path=tiny_dataset.manifest,
            plan=tiny_dataset.plan,
            cache_dir=tiny_dataset.cache,
            config=config,
            run_dir=tmp_path / "run",
            tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        )
