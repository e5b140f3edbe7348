"""``--fast``: only the low-resolution members, at their own spacing; refused for a model
without one; members at different spacings are not averaged: without ``--fast`` a model that
carries both predicts with its full-resolution members."""

from __future__ import annotations

import pytest
import torch

from medseg.errors import ConfigError
from medseg.infer.options import PredictionOptions
from medseg.infer.predictor import ModelMember, PackagedModel, predict_scan
from tests.phantoms import small_phantom
from tests.tiny_dataset import TinyDataset
from tests.tiny_network import build


def test_fast_uses_the_low_resolution_member_at_its_spacing(tiny_dataset: TinyDataset) -> None:
    plan = tiny_dataset.plan
    lowres = plan.configurations["3d"].model_copy(
        update={"name": "3d_lowres", "target_spacing": [6.0, 6.0, 6.0]}
    )
    plan = plan.model_copy(update={"configurations": {**plan.configurations, "3d_lowres": lowres}})
    torch.manual_seed(0)
    members = [ModelMember(build(1, 6).eval(), name) for name in ("3d", "3d_lowres")]
    model = PackagedModel(members=members, plan=plan, label_names=plan.label_names, source="m")
    ct, _ = small_phantom(1)
    with pytest.raises(ConfigError, match="different spacings"):
        predict_scan(ct, model, options=PredictionOptions())
    fast = model.for_prediction(fast=True)
    assert [m.configuration for m in fast.members] == ["3d_lowres"]
    assert fast.plan.target_spacing == [6.0, 6.0, 6.0]
    labels = predict_scan(ct, fast, options=PredictionOptions(fast=True))
    assert labels.same_grid(ct)
    default = model.for_prediction(fast=False)
    assert [m.configuration for m in default.members] == ["3d"]
    assert default.plan.target_spacing == tiny_dataset.plan.target_spacing
    full = PackagedModel(members=members[:1], plan=plan, label_names=plan.label_names, source="m")
    assert full.plan.target_spacing == tiny_dataset.plan.target_spacing
    assert full.for_prediction(fast=False) is full
    with pytest.raises(ConfigError, match="--fast: model m has no low-resolution configuration"):
        full.for_prediction(fast=True)
    coarse_only = fast.for_prediction(fast=False)  # a model of only low-resolution members
    assert [m.configuration for m in coarse_only.members] == ["3d_lowres"]
