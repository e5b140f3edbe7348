"""Ensembles in the registry: ``medseg ensemble`` registers members as ONE model version that
``medseg predict`` loads by alias; members that disagree are refused (real MLflow server)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from medseg.cli.app import app
from medseg.infer.options import PredictionOptions
from medseg.infer.predictor import (
    PackagedModel,
    ensemble_probabilities,
    load_packaged_model,
    predict_scan,
)
from medseg.io.nifti import read_nifti
from medseg.preprocess.case import preprocess_case, restore_argmax
from medseg.preprocess.plan import Plan
from medseg.tracking.ensemble import register_ensemble
from medseg.tracking.packaging import (
    LoadedMember,
    LoadedModel,
    SegmentationPyfuncModel,
    load_segmentation_model,
)
from tests.mlflow_server import mlflow_server  # noqa: F401
from tests.packaged_model import TinyUnet, log_tiny_unet
from tests.phantom_plan import plan_phantoms
from tests.phantoms import write_phantom_nifti

POSTPROCESSING = {"note": "kept as given; only its rules are applied"}


@dataclass(frozen=True)
class Members:
    server: str
    plan: Plan
    first: TinyUnet  # models:/ens-a@champion
    second: TinyUnet  # models:/ens-b/1


def _medseg(*arguments: object):
    return CliRunner().invoke(app, [str(a) for a in arguments], prog_name="medseg")


def _apply(command: str, scans: Path, out: Path, server: str):
    """``medseg predict|batch SCANS`` with the ensemble made by the command test."""
    model = "models:/ens-cli@production"
    return _medseg(
        command,
        scans,
        "--model",
        model,
        "--out",
        out,
        "--tracking-uri",
        server,
        "--case-ids",
        "folder",
        "--backend",  # equal to the library's torch result, voxel for voxel
        "torch",
    )


def _said(output: str) -> str:
    return " ".join(output.split())


@pytest.fixture(scope="module")
def members(mlflow_server, tmp_path_factory) -> Members:  # noqa: F811
    plan = plan_phantoms(tmp_path_factory.mktemp("plan"))
    first = log_tiny_unet(plan, mlflow_server, registered_model_name="ens-a", seed=1)
    MlflowClient(mlflow_server).set_registered_model_alias("ens-a", "champion", "1")
    second = log_tiny_unet(plan, mlflow_server, registered_model_name="ens-b", seed=2)
    return Members(mlflow_server, plan, first, second)


@pytest.fixture(scope="module")
def registered(members: Members):
    return register_ensemble(
        ["models:/ens-a@champion", "models:/ens-b/1"],
        name="ens-lib",
        alias="champion",
        tracking_uri=members.server,
        postprocessing=POSTPROCESSING,
    )


def _softmax(network: torch.nn.Module, array: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.softmax(network(torch.from_numpy(array)), dim=1).numpy()


def test_pyfunc_of_the_ensemble_is_the_mean_of_its_members(members, registered) -> None:
    mlflow.set_tracking_uri(members.server)
    pyfunc = mlflow.pyfunc.load_model("models:/ens-lib@champion")
    array = np.random.default_rng(0).normal(size=(1, 1, 32, 32, 32)).astype(np.float32)
    expected = (
        _softmax(members.first.network, array) + _softmax(members.second.network, array)
    ) / 2
    np.testing.assert_allclose(pyfunc.predict(array), expected, atol=1e-6)


def test_the_package_lists_members_with_their_origin_and_keeps_postprocessing(
    members, registered
) -> None:
    loaded = load_segmentation_model("models:/ens-lib@champion", tracking_uri=members.server)
    assert registered.model_uri == "models:/ens-lib/1"
    assert [m.origin["source"] for m in loaded.members] == [
        "models:/ens-a@champion",
        "models:/ens-b/1",
    ]
    assert [m.origin["model_uri"] for m in loaded.members] == ["models:/ens-a/1", "models:/ens-b/1"]
    assert [m.origin["run_id"] for m in loaded.members] == [
        members.first.run_id,
        members.second.run_id,
    ]
    assert [m.configuration for m in loaded.members] == ["3d", "3d"]
    assert loaded.postprocessing == POSTPROCESSING
    packaged = load_packaged_model("models:/ens-lib@champion", tracking_uri=members.server)
    assert packaged.postprocessing == POSTPROCESSING
    assert packaged.description == "an ensemble of 2 members (3d, 3d)"
    run = MlflowClient(members.server).get_run(registered.run_id)
    assert run.data.params["ensemble.members"] == "2"
    assert run.data.params["ensemble.member_1.source"] == "models:/ens-b/1"
    assert run.data.params["ensemble.member_0.run_id"] == members.first.run_id
    assert run.data.tags["medseg.ensemble.member_0"] == "models:/ens-a@champion"


def test_ensemble_command_then_predict_and_batch_by_alias_give_the_library_label_map(
    members: Members, tmp_path: Path
) -> None:
    postprocessing = tmp_path / "postprocessing.json"
    postprocessing.write_text('{"rules": {"structures": {}}}', encoding="utf-8")
    made = _medseg(
        "ensemble",
        "models:/ens-a@champion",
        "models:/ens-b/1",
        "--register",
        "ens-cli",
        "--alias",
        "production",
        "--postprocessing",
        postprocessing,
        "--tracking-uri",
        members.server,
    )
    assert made.exit_code == 0, made.output
    assert "registered an ensemble of 2 members as models:/ens-cli/1 (alias production)" in _said(
        made.output
    )
    scan_path = write_phantom_nifti(tmp_path / "scans" / "phantom.nii.gz", seed=3)
    out = tmp_path / "out"
    predicted = _apply("predict", scan_path.parent, out, members.server)
    assert predicted.exit_code == 0, predicted.output
    assert "an ensemble of 2 members (3d, 3d)" in _said(predicted.output)
    labels = read_nifti(out / "phantom.nii.gz")
    # the library: each member alone on the preprocessed grid, their mean, back onto the scan
    case = preprocess_case(read_nifti(scan_path), None, members.plan, case_id="phantom")
    alone = [
        ensemble_probabilities(
            load_packaged_model(uri, tracking_uri=members.server),
            torch.from_numpy(case.image),
            options=PredictionOptions(),
        ).numpy()
        for uri in ("models:/ens-a/1", "models:/ens-b/1")
    ]
    expected = restore_argmax((alone[0] + alone[1]) / 2, case.properties)
    np.testing.assert_array_equal(labels.array, expected.array)
    for single in alone:  # the ensemble's label map is neither member's
        assert not np.array_equal(restore_argmax(single, case.properties).array, expected.array)
    batched = _apply("batch", scan_path.parent, tmp_path / "batch", members.server)
    assert batched.exit_code == 0, batched.output
    assert "model: an ensemble of 2 members" in _said(batched.output)
    result = json.loads((tmp_path / "batch" / "phantom" / "result.json").read_text())
    assert result["ensemble_members"] == 2 and result["model"] == "models:/ens-cli/1"
    batch_labels = read_nifti(tmp_path / "batch" / "phantom" / "phantom.nii.gz")
    np.testing.assert_array_equal(batch_labels.array, expected.array)


@pytest.fixture(scope="module")
def disagreeing(members: Members) -> Members:
    """ens-spacing (another target spacing) and ens-labels (a renamed structure)."""
    spacing = members.plan.model_copy(update={"target_spacing": [2.0, 2.0, 2.0]})
    log_tiny_unet(spacing, members.server, registered_model_name="ens-spacing")
    names = {**members.plan.label_names, 1: "renamed"}
    log_tiny_unet(
        members.plan.model_copy(update={"label_names": names}),
        members.server,
        registered_model_name="ens-labels",
    )
    return members


@pytest.mark.parametrize(
    ("member_uris", "message"),
    [
        (
            ["models:/ens-a/1", "models:/ens-spacing/1"],
            "error: ensemble: members models:/ens-a/1 and models:/ens-spacing/1 have different "
            "plans: 'target_spacing' is",
        ),
        (
            ["models:/ens-a/1", "models:/ens-labels/1"],
            "error: ensemble: members models:/ens-a/1 and models:/ens-labels/1 have different "
            "label names:",
        ),
        (
            ["models:/ens-a/1", "models:/ens-missing@champion"],
            "error: models:/ens-missing@champion",
        ),
        (["models:/ens-a/1"], "error: ensemble: needs at least 2 member models, got 1"),
        (["models:/ens-a/1", "models:/ens-a@champion"], "is given twice (models:/ens-a/1)"),
    ],
    ids=["plans", "labels", "unknown", "one", "twice"],
)
def test_members_that_cannot_be_ensembled_are_refused_in_one_line(
    disagreeing: Members, member_uris: list[str], message: str
) -> None:
    runs_before = len(mlflow.search_runs(search_all_experiments=True))
    result = _medseg(
        "ensemble", *member_uris, "--register", "ens-refused", "--tracking-uri", disagreeing.server
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert message in lines[0]
    assert len(mlflow.search_runs(search_all_experiments=True)) == runs_before  # no run left


def test_a_one_network_package_of_the_old_layout_loads_and_predicts_as_before(
    members: Members, tmp_path: Path
) -> None:
    folder = Path(
        mlflow.artifacts.download_artifacts(
            "models:/ens-b/1", dst_path=str(tmp_path), tracking_uri=members.server
        )
    )
    files = sorted(p.name for p in (folder / "artifacts").iterdir())
    exported = [name for name in files if name.endswith(".onnx")]  # the stored ONNX export
    assert len(exported) == 1
    assert [name for name in files if name not in exported] == [
        "labels.json", "model.json", "plan.json", "weights.pt",
    ]  # no ensemble.json  # fmt: skip
    model = load_packaged_model(str(folder), tracking_uri=members.server)
    assert model.description == "one network (3d)" and model.postprocessing is None
    assert model.plan == members.plan
    scan_path = write_phantom_nifti(tmp_path / "phantom.nii.gz", seed=3)
    kept: list[np.ndarray] = []
    predict_scan(read_nifti(scan_path), model, options=PredictionOptions(), probabilities_out=kept)
    in_memory = PackagedModel.of_network(
        members.second.network,
        plan=members.plan,
        configuration="3d",
        label_names=members.plan.label_names,
    )
    expected: list[np.ndarray] = []
    predict_scan(
        read_nifti(scan_path), in_memory, options=PredictionOptions(), probabilities_out=expected
    )
    np.testing.assert_array_equal(np.stack(kept), np.stack(expected))


def test_pyfunc_runs_a_2d_member_slice_by_slice_along_its_slice_axis() -> None:
    torch.manual_seed(0)
    flat, deep = torch.nn.Conv2d(1, 3, 3, padding=1).eval(), torch.nn.Conv3d(1, 3, 1).eval()
    pyfunc = SegmentationPyfuncModel()
    pyfunc.loaded = LoadedModel(
        members=(
            LoadedMember(flat, {}, configuration="2d", mirror_axes=None),
            LoadedMember(deep, {}, configuration="3d", mirror_axes=None),
        ),
        plan={"configurations": {"2d": {"slice_axis": 1}, "3d": {"slice_axis": None}}},
        labels={0: "background", 1: "a", 2: "b"},
    )
    array = np.random.default_rng(1).normal(size=(2, 1, 5, 4, 6)).astype(np.float32)
    per_slice = np.stack(
        [_softmax(flat, np.ascontiguousarray(array[:, :, :, y])) for y in range(4)], axis=3
    )
    expected = (per_slice + _softmax(deep, array)) / 2
    np.testing.assert_allclose(pyfunc.predict(None, array), expected, atol=1e-6)
