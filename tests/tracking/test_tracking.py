"""Tracking on a real MLflow server (runs, packaging, registry) and on the embedded SQLite store."""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import matplotlib.image
import mlflow
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from medseg import __version__
from medseg.errors import TrackingError
from medseg.tracking.packaging import load_segmentation_model, log_segmentation_model
from medseg.tracking.registry import (
    Alias,
    PromotionResult,
    pin_model_uri,
    register_and_promote,
    register_run_model,
)
from medseg.tracking.runs import RunTracker
from medseg.tracking.store import tracking_uri
from medseg.tracking.tags import (
    TAG_GIT_COMMIT,
    TAG_MANIFEST_SHA256,
    TAG_MEDSEG_VERSION,
    flatten_params,
    refuse_file_paths,
)
from tests.mlflow_server import mlflow_server  # noqa: F401
from tests.tiny_network import TinyNet, build

FACTORY = "tests.tiny_network:build"
LABELS = {0: "background", 1: "anterior", 2: "posterior"}
PLAN = {"target_spacing_mm": [1.0, 1.0, 1.0], "normalization": "zscore"}
MANIFEST_SHA256 = "c" * 64
LONG_VALUE = "x" * (MAX_PARAM_VAL_LENGTH + 500)


def _example(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _network(seed: int, *, deep_supervision: bool = False) -> TinyNet:
    torch.manual_seed(seed)
    return build(1, len(LABELS), deep_supervision)


def _softmax(network: torch.nn.Module, array: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = network.eval()(torch.from_numpy(array))
    if isinstance(logits, list):
        logits = logits[0]
    return torch.softmax(logits, dim=1).numpy()


@pytest.fixture(scope="module", autouse=True)
def isolated_default_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A call that forgets its URI lands in a temporary default store, never in the checkout."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDSEG_HOME", str(tmp_path_factory.mktemp("medseg-home")))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield


@pytest.fixture
def use_tracking_uri(monkeypatch):
    """Point mlflow's fluent API at a URI; the exported env var is restored after the test."""

    def use(uri: str) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)

    return use


# --- without a server ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("explicit", "env_uri", "medseg_home", "expected"),
    [
        ("http://explicit:5000", "http://env:5000", None, "http://explicit:5000"),
        (None, "http://env:5000", None, "http://env:5000"),
        (None, None, "home", "sqlite:///{tmp}/home/mlruns/mlflow.db"),
        (None, None, None, "sqlite:///{tmp}/mlruns/mlflow.db"),
    ],
)
def test_tracking_uri_resolution(
    explicit, env_uri, medseg_home, expected, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in (("MLFLOW_TRACKING_URI", env_uri), ("MEDSEG_HOME", medseg_home)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert tracking_uri(explicit) == expected.format(tmp=tmp_path.resolve())


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"lr": 0.01}, {"lr": "0.01"}),
        (
            {"optim": {"lr": 0.01, "betas": (0.9, 0.99)}},
            {"optim.lr": "0.01", "optim.betas": "[0.9, 0.99]"},
        ),
        ({"a": {"b": {"c": None}}, "d": True}, {"a.b.c": "None", "d": "True"}),
    ],
)
def test_flatten_params(params, expected) -> None:
    assert flatten_params(params) == expected


@pytest.mark.parametrize(
    ("value", "refused"),
    [
        ("/home/alice/scans/ct.nii.gz", True),
        ("C:\\Users\\alice\\ct.nii.gz", True),
        ("~/scans", True),
        ("file:///data/ct.nii.gz", True),
        ("images/case_001.nii.gz", False),
        ("0.001", False),
        ("3fa85f64c2b1e0d4", False),
    ],
)
def test_refuse_file_paths(value, refused) -> None:
    if refused:
        with pytest.raises(TrackingError, match="'source' looks like an absolute"):
            refuse_file_paths({"source": value}, kind="param")
    else:
        refuse_file_paths({"source": value}, kind="param")


def test_register_and_promote_refuses_nan_metric() -> None:
    with pytest.raises(TrackingError, match="val_mean_dice is nan"):
        register_and_promote("1", name="unused", metric=float("nan"))


# --- embedded SQLite store (no server) ------------------------------------------------------


@dataclass
class SqliteModel:
    uri: str
    db_folder: Path
    model_uri: str
    network: TinyNet


@pytest.fixture(scope="module")
def sqlite_model(tmp_path_factory: pytest.TempPathFactory) -> SqliteModel:
    """A deep-supervision network logged to ``sqlite:///<tmp>/mlflow.db`` without a server."""
    folder = tmp_path_factory.mktemp("sqlite-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    network = _network(7, deep_supervision=True)
    with RunTracker(uri).start(experiment="embedded/sqlite", run_name="local", tags={}):
        info = log_segmentation_model(
            network,
            factory=FACTORY,
            factory_kwargs={"in_channels": 1, "out_channels": 3, "deep_supervision": True},
            plan=PLAN,
            labels=LABELS,
            input_example=_example((1, 1, 8, 8, 8), seed=0),
            registered_model_name=None,
        )
    return SqliteModel(uri=uri, db_folder=folder, model_uri=info.model_uri, network=network)


def test_sqlite_store_keeps_artifacts_beside_database(sqlite_model) -> None:
    experiment = MlflowClient(sqlite_model.uri).get_experiment_by_name("embedded/sqlite")
    assert (
        experiment.artifact_location
        == (sqlite_model.db_folder / "artifacts/embedded_sqlite").as_uri()
    )
    assert list((sqlite_model.db_folder / "artifacts").rglob("weights.pt"))


def test_tracking_leaves_callers_environment_alone(sqlite_model) -> None:
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; medseg must undo that.
    assert os.environ.get("MLFLOW_TRACKING_URI") != sqlite_model.uri


def test_pyfunc_predicts_first_deep_supervision_output(sqlite_model, use_tracking_uri) -> None:
    use_tracking_uri(sqlite_model.uri)
    array = _example((1, 1, 6, 10, 8), seed=3)
    probabilities = mlflow.pyfunc.load_model(sqlite_model.model_uri).predict(array)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, _softmax(sqlite_model.network, array), atol=1e-5)


# --- real server: runs ----------------------------------------------------------------------


@dataclass
class LoggedRun:
    uri: str
    client: MlflowClient
    run_id: str


@pytest.fixture(scope="module")
def logged_run(mlflow_server, tmp_path_factory) -> LoggedRun:  # noqa: F811
    folder = tmp_path_factory.mktemp("run-files")
    overlay = folder / "overlay.png"
    matplotlib.image.imsave(overlay, np.eye(8))
    figure = Figure(figsize=(2, 2))
    figure.add_subplot().plot([1, 2, 3])
    tracker = RunTracker(mlflow_server)
    with tracker.start(
        experiment="runs",
        run_name="fold0",
        tags={"fold": "0"},
        manifest_sha256=MANIFEST_SHA256,
    ) as run:
        run.log_params({"optim": {"lr": 0.001, "betas": [0.9, 0.99]}, "long": LONG_VALUE})
        for step, loss in ((1, 0.9), (2, 0.6)):
            run.log_metrics({"loss": loss, "val": {"mean_dice": 1 - loss}}, step=step)
        run.log_dict({"cases": 3}, "summary/summary.json")
        run.log_image(overlay)
        run.log_figure(figure, "figures/curve.png")
        run.set_tags({"stage": "train"})
    return LoggedRun(mlflow_server, MlflowClient(mlflow_server), tracker.run_id)


def test_run_params_are_flattened(logged_run) -> None:
    params = logged_run.client.get_run(logged_run.run_id).data.params
    assert params["optim.lr"] == "0.001"
    assert params["optim.betas"] == "[0.9, 0.99]"


def test_long_param_is_cut_and_kept_whole_as_artifact(logged_run) -> None:
    cut = logged_run.client.get_run(logged_run.run_id).data.params["long"]
    assert len(cut) == MAX_PARAM_VAL_LENGTH
    assert cut.endswith("[truncated; full value in artifact params/long.txt]")
    path = mlflow.artifacts.download_artifacts(
        run_id=logged_run.run_id, artifact_path="params/long.txt", tracking_uri=logged_run.uri
    )
    assert Path(path).read_text() == LONG_VALUE


def test_run_metrics_by_step(logged_run) -> None:
    history = logged_run.client.get_metric_history(logged_run.run_id, "val.mean_dice")
    assert sorted((m.step, round(m.value, 6)) for m in history) == [(1, 0.1), (2, 0.4)]


def test_run_artifacts(logged_run) -> None:
    client, run_id = logged_run.client, logged_run.run_id
    names = {
        f.path
        for folder in ("summary", "images", "figures")
        for f in client.list_artifacts(run_id, folder)
    }
    assert names == {"summary/summary.json", "images/overlay.png", "figures/curve.png"}
    summary = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="summary/summary.json", tracking_uri=logged_run.uri
    )
    assert json.loads(Path(summary).read_text()) == {"cases": 3}


def test_run_standard_tags(logged_run) -> None:
    run = logged_run.client.get_run(logged_run.run_id)
    tags = run.data.tags
    assert tags[TAG_MEDSEG_VERSION] == __version__
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", tags[TAG_GIT_COMMIT])
    assert tags[TAG_MANIFEST_SHA256] == MANIFEST_SHA256
    assert (tags["fold"], tags["stage"]) == ("0", "train")
    assert "/" not in tags["mlflow.source.name"]
    assert run.info.status == RunStatus.to_string(RunStatus.FINISHED)


def test_path_like_param_is_refused_and_run_fails(mlflow_server) -> None:  # noqa: F811
    tracker = RunTracker(mlflow_server)
    with (
        pytest.raises(TrackingError, match=r"'data\.root' looks like an absolute"),
        tracker.start(experiment="runs", run_name="bad", tags={}) as run,
    ):
        run.log_params({"data": {"root": "/home/alice/scans"}})
    run = MlflowClient(mlflow_server).get_run(tracker.run_id)
    assert "data.root" not in run.data.params
    assert run.info.status == RunStatus.to_string(RunStatus.FAILED)


def test_child_run_is_nested_under_parent(mlflow_server) -> None:  # noqa: F811
    with RunTracker(mlflow_server).start(experiment="runs", run_name="sweep", tags={}) as parent:
        child = RunTracker(mlflow_server).start(
            experiment="runs", run_name="trial", tags={}, parent_run_id=parent.run_id
        )
        with child:
            child.log_metrics({"loss": 0.5}, step=0)
        parent.log_metrics({"best_loss": 0.5}, step=0)
    client = MlflowClient(mlflow_server)
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id
    assert client.get_run(parent.run_id).data.metrics == {"best_loss": 0.5}


def test_log_image_refuses_non_png(mlflow_server, tmp_path) -> None:  # noqa: F811
    jpeg = tmp_path / "overlay.png"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0 not a png")
    with (
        RunTracker(mlflow_server).start(experiment="runs", run_name="img", tags={}) as run,
        pytest.raises(TrackingError, match=r"overlay\.png: not a PNG file"),
    ):
        run.log_image(jpeg)


@pytest.mark.parametrize(
    ("factory_kwargs", "labels", "message"),
    [
        ({"in_channels": 1, "out_channels": 2}, LABELS, "builds a different network"),
        ({"in_channels": 1, "out_channels": 3}, {0: "bg", 2: "x"}, r"must be the channels 0\.\.2"),
    ],
)
def test_log_model_refuses_inconsistent_package(
    mlflow_server,  # noqa: F811
    factory_kwargs,
    labels,
    message,
) -> None:
    with (
        RunTracker(mlflow_server).start(experiment="runs", run_name="bad-model", tags={}),
        pytest.raises(TrackingError, match=message),
    ):
        log_segmentation_model(
            _network(0),
            factory=FACTORY,
            factory_kwargs=factory_kwargs,
            plan=PLAN,
            labels=labels,
            input_example=_example((1, 1, 8, 8, 8), seed=0),
        )


# --- real server: registry ------------------------------------------------------------------


@dataclass
class Registered:
    uri: str
    name: str
    networks: dict[str, TinyNet]
    results: list[PromotionResult]
    aliases: list[dict[str, str]]  # registered model aliases after each promotion


METRICS = (0.5, 0.4, 0.6, 0.6)


@pytest.fixture(scope="module")
def registered(mlflow_server) -> Registered:  # noqa: F811
    name = "tiny-hippocampus"
    client = MlflowClient(mlflow_server)
    networks, results, aliases = {}, [], []
    for seed, metric in enumerate(METRICS):
        network = _network(seed)
        with RunTracker(mlflow_server).start(experiment="registry", run_name=f"v{seed}", tags={}):
            info = log_segmentation_model(
                network,
                factory=FACTORY,
                factory_kwargs={"in_channels": 1, "out_channels": 3},
                plan=PLAN,
                labels=LABELS,
                input_example=_example((1, 1, 8, 8, 8), seed=0),
                registered_model_name=name,
            )
        version = str(info.registered_model_version)
        networks[version] = network
        results.append(
            register_and_promote(version, name=name, metric=metric, tracking_uri=mlflow_server)
        )
        aliases.append(dict(client.get_registered_model(name).aliases))
    return Registered(mlflow_server, name, networks, results, aliases)


def test_every_new_version_becomes_candidate(registered) -> None:
    assert [a[Alias.CANDIDATE] for a in registered.aliases] == ["1", "2", "3", "4"]


def test_champion_moves_only_on_strictly_greater_metric(registered) -> None:
    assert [a[Alias.CHAMPION] for a in registered.aliases] == ["1", "1", "3", "3"]
    assert [r.promoted for r in registered.results] == [True, False, True, False]
    assert registered.results[2].previous_champion_metric == 0.5


def test_version_tags_hold_metric_and_medseg_version(registered) -> None:
    version = MlflowClient(registered.uri).get_model_version(registered.name, "2")
    assert float(version.tags["val_mean_dice"]) == 0.4
    assert version.tags[TAG_MEDSEG_VERSION] == __version__


def test_champion_pyfunc_predicts_like_in_memory_network(registered, use_tracking_uri) -> None:
    use_tracking_uri(registered.uri)
    model = mlflow.pyfunc.load_model(f"models:/{registered.name}@{Alias.CHAMPION}")
    array = _example((2, 1, 12, 10, 6), seed=5)  # not the example's shape: dims are variable
    expected = _softmax(registered.networks["3"], array)
    np.testing.assert_allclose(model.predict(array), expected, atol=1e-5)


def test_load_segmentation_model_returns_champion_network(registered) -> None:
    loaded = load_segmentation_model(
        f"models:/{registered.name}@{Alias.CHAMPION}", tracking_uri=registered.uri
    )
    expected = registered.networks["3"].state_dict()
    actual = loaded.network.state_dict()
    assert actual.keys() == expected.keys()
    assert all(torch.equal(actual[key].cpu(), expected[key]) for key in expected)
    assert not loaded.network.training
    assert (loaded.labels, loaded.plan) == (LABELS, PLAN)
    assert loaded.model_info["factory"] == FACTORY


def test_alias_uris_are_pinned_to_the_version_they_point_at(registered) -> None:
    pin = functools.partial(pin_model_uri, tracking_uri=registered.uri)
    assert pin(f"models:/{registered.name}@{Alias.CHAMPION}") == f"models:/{registered.name}/3"
    assert pin(f"models:/{registered.name}@{Alias.CANDIDATE}") == f"models:/{registered.name}/4"
    for unchanged in (f"models:/{registered.name}/2", "runs:/abc/model", "/models/folder"):
        assert pin(unchanged) == unchanged
    with pytest.raises(TrackingError, match=f"models:/{registered.name}@nope"):
        pin(f"models:/{registered.name}@nope")


def test_register_run_model_registers_the_runs_packaged_model(registered) -> None:
    client = MlflowClient(registered.uri)
    source = client.get_model_version(registered.name, "1").run_id
    version = register_run_model(source, name="re-registered", tracking_uri=registered.uri)
    assert version == "1"
    assert client.get_model_version("re-registered", "1").run_id == source
    with pytest.raises(TrackingError, match="no packaged 'model'"):
        with RunTracker(registered.uri).start(experiment="empty", run_name="x", tags={}) as run:
            pass
        register_run_model(run.run_id, name="nothing", tracking_uri=registered.uri)
