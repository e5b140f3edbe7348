"""Ensembles in prediction: the mean of the members' probabilities on the preprocessed grid,
with each member's configuration, mirroring TTA and the exported backends."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.errors import ConfigError
from medseg.infer.options import PredictionOptions
from medseg.infer.predictor import (
    ModelMember,
    PackagedModel,
    ensemble_probabilities,
    predict_scan,
)
from medseg.infer.sliding_window import predict_probabilities
from medseg.infer.stage import scan_predictors
from medseg.preprocess.case import preprocess_case, restore_argmax
from medseg.preprocess.plan import Plan
from tests.phantom_plan import plan_phantoms
from tests.phantoms import small_phantom


@pytest.fixture(scope="module")
def phantom_plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    return plan_phantoms(tmp_path_factory.mktemp("phantom_plan"))


@pytest.fixture(scope="module")
def export_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Exports shared by the backends' tests (the export is the slow part)."""
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="module")
def image(phantom_plan: Plan) -> torch.Tensor:
    scan, _ = small_phantom(0)
    return torch.from_numpy(preprocess_case(scan, None, phantom_plan, case_id="s").image)


def _intensity_net(configuration: str, favoured: dict[int, float]) -> torch.nn.Module:
    """A 1x1 convolution whose logits are log-probability biases plus a small intensity term:
    its argmax is the class with the largest bias wherever the image is near 0."""
    conv = (torch.nn.Conv3d if configuration == "3d" else torch.nn.Conv2d)(1, 6, 1)
    with torch.no_grad():
        probabilities = torch.full((6,), 0.01)
        for label, probability in favoured.items():
            probabilities[label] = probability
        conv.bias.copy_(probabilities.log())
        conv.weight.copy_(torch.linspace(-0.05, 0.05, 6).reshape(conv.weight.shape))
    return conv.eval()


def _random_net(configuration: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    conv = (torch.nn.Conv3d if configuration == "3d" else torch.nn.Conv2d)(1, 6, 3, padding=1)
    return conv.eval()


def _member(network: torch.nn.Module, configuration: str, mirror_axes=None) -> ModelMember:
    return ModelMember(network=network, configuration=configuration, mirror_axes=mirror_axes)


def _ensemble(plan: Plan, *members: ModelMember) -> PackagedModel:
    return PackagedModel(members=list(members), plan=plan, label_names=plan.label_names)


def _alone(plan: Plan, member: ModelMember, image: torch.Tensor, **options) -> torch.Tensor:
    configuration = plan.configurations[member.configuration]
    return predict_probabilities(
        member.network,
        image,
        patch_size=configuration.patch_size,
        num_classes=len(plan.label_names),
        mirror_axes=member.mirror_axes,
        slice_axis=configuration.slice_axis,
        **options,
    )


def test_ensemble_of_a_3d_and_a_2d_member_is_the_mean_and_can_change_the_argmax(
    phantom_plan: Plan, image: torch.Tensor
) -> None:
    # member A favours class 1 over 3, B class 2 over 3; their mean favours 3: the ensemble's
    # argmax is a class that neither member chose
    first = _member(_intensity_net("3d", {1: 0.5, 3: 0.4}), "3d")
    second = _member(_intensity_net("2d", {2: 0.5, 3: 0.4}), "2d")
    model = _ensemble(phantom_plan, first, second)
    mean = ensemble_probabilities(model, image, options=PredictionOptions())
    alone = [_alone(phantom_plan, member, image) for member in (first, second)]
    np.testing.assert_allclose(mean.numpy(), ((alone[0] + alone[1]) / 2).numpy(), atol=1e-6)
    changed = (mean.argmax(0) != alone[0].argmax(0)) & (mean.argmax(0) != alone[1].argmax(0))
    assert changed.float().mean().item() > 0.5
    assert set(mean.argmax(0).unique().tolist()) == {3}


def test_mirroring_with_an_ensemble_is_the_mean_of_each_members_own_mirroring(
    phantom_plan: Plan, image: torch.Tensor
) -> None:
    first = _member(_random_net("3d", seed=1), "3d", mirror_axes=[0, 1])
    second = _member(_random_net("3d", seed=2), "3d", mirror_axes=[0])
    model = _ensemble(phantom_plan, first, second)
    mirrored = ensemble_probabilities(model, image, options=PredictionOptions(mirror=True))
    expected = sum(_alone(phantom_plan, m, image, mirror=True) for m in (first, second)) / 2
    np.testing.assert_allclose(mirrored.numpy(), expected.numpy(), atol=1e-6)
    plain = ensemble_probabilities(model, image, options=PredictionOptions())
    assert (mirrored - plain).abs().max().item() > 1e-3  # mirroring did something


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_exported_backends_give_the_torch_ensemble(
    phantom_plan: Plan, image: torch.Tensor, export_cache: Path, backend: str
) -> None:
    model = _ensemble(
        phantom_plan,
        _member(_random_net("3d", seed=3), "3d"),
        _member(_random_net("2d", seed=4), "2d"),
    )
    options = PredictionOptions(backend=backend)
    predictors = scan_predictors(model, options, cache_dir=export_cache)
    assert len(predictors) == 2 and len(list(export_cache.glob("*.onnx"))) == 2
    exported = ensemble_probabilities(model, image, options=options, predictors=predictors)
    reference = ensemble_probabilities(model, image, options=PredictionOptions())
    difference = (exported - reference).abs().max().item()
    assert math.isfinite(difference) and difference < 1e-4


def test_predict_scan_of_a_one_member_model_is_the_networks_own_argmax(
    phantom_plan: Plan,
) -> None:
    network = _random_net("3d", seed=5)
    model = PackagedModel.of_network(
        network, plan=phantom_plan, configuration="3d", label_names=phantom_plan.label_names
    )
    scan, _ = small_phantom(0)
    kept: list[np.ndarray] = []
    predict_scan(scan, model, options=PredictionOptions(), probabilities_out=kept)
    case = preprocess_case(scan, None, phantom_plan, case_id="s")
    alone = _alone(phantom_plan, model.members[0], torch.from_numpy(case.image))
    assert model.description == "one network (3d)"
    expected: list[np.ndarray] = []
    restore_argmax(alone.numpy(), case.properties, keep=expected)
    np.testing.assert_array_equal(np.stack(kept), np.stack(expected))


def test_members_with_different_input_channels_are_refused(phantom_plan: Plan) -> None:
    one = ModelMember(network=_random_net("3d", 0), configuration="3d")
    two = ModelMember(
        network=_random_net("3d", 0),
        configuration="3d",
        info={"factory_kwargs": {"in_channels": 2}},
    )
    with pytest.raises(ConfigError, match=r"members take different input channels \[1, 2\]"):
        _ensemble(phantom_plan, one, two)


def test_one_predictor_per_member_is_required(phantom_plan: Plan, image: torch.Tensor) -> None:
    network = _random_net("3d", 0)
    model = _ensemble(phantom_plan, _member(network, "3d"), _member(network, "3d"))
    with pytest.raises(ConfigError, match="1 predictors for 2 members"):
        ensemble_probabilities(model, image, options=PredictionOptions(), predictors=[network])
