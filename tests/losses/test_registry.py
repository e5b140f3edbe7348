"""Loss specs: building losses from config forms, and clear refusals."""

from __future__ import annotations

import inspect

import pytest
import torch
import yaml

from medseg.errors import LossConfigError
from medseg.losses import (
    LOSSES,
    BorderWeightedCELoss,
    CESpec,
    CombinedLoss,
    CrossEntropyLoss,
    DiceCELoss,
    DiceCESpec,
    FocalLoss,
    FocalSpec,
    LossSpec,
    SegmentationLoss,
    build_loss,
)
from tests.losses.helpers import _random_inputs

YAML_SPEC = """
dice_ce:
  batch_dice: true
  class_weights: [1, 2, 2]
border_ce: 0.5
"""


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param("ce", CrossEntropyLoss(), id="name"),
        pytest.param({"dice_ce": 1.0}, DiceCELoss(), id="weight-1"),
        pytest.param(
            {"dice_ce": 1.0, "border_ce": 0.5},
            CombinedLoss([(1.0, DiceCELoss()), (0.5, BorderWeightedCELoss())]),
            id="two",
        ),
        pytest.param({"focal": {"weight": 1.0, "gamma": 3.0}}, FocalLoss(gamma=3.0), id="options"),
        pytest.param({"focal": 2}, CombinedLoss([(2.0, FocalLoss())]), id="weight-2"),
        pytest.param(
            yaml.safe_load(YAML_SPEC),
            CombinedLoss(
                [
                    (1.0, DiceCELoss(batch_dice=True, class_weights=[1.0, 2.0, 2.0])),
                    (0.5, BorderWeightedCELoss()),
                ]
            ),
            id="yaml",
        ),
        pytest.param(
            LossSpec(ce=CESpec(class_weights=(1.0, 5.0, 2.0))),
            CrossEntropyLoss(class_weights=[1.0, 5.0, 2.0]),
            id="model",
        ),
    ],
)
def test_build_loss_from_specs(spec: object, expected: SegmentationLoss) -> None:
    loss = build_loss(spec)
    assert type(loss) is type(expected)
    assert getattr(loss, "term_weights", None) == getattr(expected, "term_weights", None)
    logits, target = _random_inputs((2, 3, 6, 5), seed=18)
    weights = 1 + torch.rand(target.shape, generator=torch.Generator().manual_seed(19))
    torch.testing.assert_close(
        loss(logits, target, weights), expected(logits, target, weights), rtol=0, atol=0
    )


def test_build_loss_passes_options_to_the_losses() -> None:
    loss = build_loss(yaml.safe_load(YAML_SPEC))
    dice_ce, border_ce = loss.losses
    assert dice_ce.batch_dice is True and dice_ce.include_background is False
    assert dice_ce.class_weights.tolist() == [1.0, 2.0, 2.0]
    assert isinstance(border_ce, BorderWeightedCELoss) and loss.needs_weights
    assert build_loss({"focal": {"gamma": 3.0}}).gamma == 3.0


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        pytest.param(
            "dice", "unknown loss 'dice'; valid losses: ce, dice_ce, focal, border_ce", id="name"
        ),
        pytest.param(
            {"dice_ce": 1.0, "tversky": 1.0}, "unknown loss 'tversky'; valid losses: ", id="extra"
        ),
        pytest.param(
            {"focal": {"gama": 3.0}},
            "focal: unknown option 'gama'; valid options: weight, gamma, class_weights",
            id="option",
        ),
        pytest.param({}, "no loss terms; give at least one of ce, dice_ce", id="empty"),
        pytest.param({"ce": 0.0}, r"ce\.weight: Input should be greater than 0", id="zero"),
        pytest.param({"ce": True}, "ce: give a weight or a mapping of options", id="bool"),
        pytest.param({"ce": "high"}, "ce: give a weight or a mapping of options", id="string"),
        pytest.param({"focal": {"gamma": -1.0}}, "focal: gamma: must be finite and >= 0", id="g"),
        pytest.param({"dice_ce": {"smooth": 0}}, "dice_ce: smooth: must be finite and > 0", id="s"),
        pytest.param(
            {"ce": {"class_weights": [1, -1]}}, "ce: class_weights: need one finite", id="cw"
        ),
        pytest.param(["ce"], "expected a loss name, a mapping", id="list"),
    ],
)
def test_build_loss_rejects_bad_specs_with_a_clear_message(spec: object, match: str) -> None:
    with pytest.raises(LossConfigError, match=match):
        build_loss(spec)


@pytest.mark.parametrize(
    ("spec_class", "loss_class"),
    [(CESpec, CrossEntropyLoss), (DiceCESpec, DiceCELoss), (FocalSpec, FocalLoss)],
)
def test_spec_options_mirror_the_loss_constructor(spec_class: type, loss_class: type) -> None:
    parameters = inspect.signature(loss_class).parameters
    options = {name: f.default for name, f in spec_class.model_fields.items() if name != "weight"}
    assert options == {name: p.default for name, p in parameters.items()}


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_registered_loss_carries_its_name_and_options_mirroring_its_constructor(
    name: str,
) -> None:
    loss_class = LOSSES[name]
    assert loss_class.config_name == name
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    parameters = inspect.signature(loss_class).parameters.values()
    options = loss_class.Options.model_fields
    assert {key: field.default for key, field in options.items() if key != "weight"} == {
        parameter.name: parameter.default for parameter in parameters if parameter.kind in named
    }
    assert build_loss(name).__class__ is loss_class


@pytest.mark.parametrize(
    ("spec", "short_form"),
    [
        ("dice_ce", {"dice_ce": 1.0}),
        ({"border_ce": 0.5, "dice_ce": 1.0}, {"dice_ce": 1.0, "border_ce": 0.5}),
        ({"focal": {"gamma": 3.0}}, {"focal": {"gamma": 3.0}}),
        (
            {"ce": {"weight": 2.0, "class_weights": [1, 3]}},
            {"ce": {"weight": 2.0, "class_weights": [1.0, 3.0]}},
        ),
    ],
)
def test_a_spec_is_saved_in_the_short_form_and_read_back_the_same(
    spec: object, short_form: dict
) -> None:
    """The form logged to MLflow: what was given, in the order the terms are summed."""
    parsed = LossSpec.model_validate(spec)
    assert parsed.model_dump(mode="json") == short_form
    assert list(parsed.model_dump(mode="json")) == list(short_form)
    assert LossSpec.model_validate(parsed.model_dump(mode="json")) == parsed
