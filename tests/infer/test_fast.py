"""``--fast``: only the low-resolution members, at their own spacing; refused for a model
without one; members at different spacings are not averaged: without ``--fast`` a model that
carries both predicts with its full-resolution members, and with ``--structures`` runs them
only where the low-resolution ones found the structures (the cascade)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from medseg.errors import ConfigError
from medseg.infer.cascade import CASCADE_MARGIN_MM, structures_box
from medseg.infer.options import PredictionOptions
from medseg.infer.predictor import ModelMember, PackagedModel, cascade_box, predict_scan
from medseg.preprocess.case import preprocess_case
from medseg.preprocess.plan import Plan
from tests.phantoms import small_phantom
from tests.tiny_dataset import TinyDataset
from tests.tiny_network import build


def _with_lowres(plan: Plan) -> Plan:
    """``plan`` with a 6 mm ``3d_lowres`` configuration beside its 3 x 3 x 4 mm ``3d``."""
    lowres = plan.configurations["3d"].model_copy(
        update={"name": "3d_lowres", "target_spacing": [6.0, 6.0, 6.0]}
    )
    return plan.model_copy(update={"configurations": {**plan.configurations, "3d_lowres": lowres}})


def test_fast_uses_the_low_resolution_member_at_its_spacing(tiny_dataset: TinyDataset) -> None:
    plan = _with_lowres(tiny_dataset.plan)
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


class _Pointwise(nn.Module):
    """Logits from each voxel's own intensity: background 0, liver (1) ``10 * (x - threshold)``,
    the other structures -10. Without context, a crop predicts its voxels as the whole scan
    does; counts the voxels it is given."""

    def __init__(self, threshold: float, classes: int) -> None:
        super().__init__()
        self.threshold, self.classes, self.voxels = threshold, classes, 0

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        self.voxels += batch[:, 0].numel()
        logits = torch.full((batch.shape[0], self.classes, *batch.shape[2:]), -10.0)
        logits[:, 0] = 0.0
        logits[:, 1] = 10 * (batch[:, 0] - self.threshold)
        return logits


def test_structures_cascade_runs_the_full_resolution_networks_on_the_box_alone(
    tiny_dataset: TinyDataset,
) -> None:
    plan = _with_lowres(tiny_dataset.plan)
    ct, _ = small_phantom(1)
    # "liver" where the normalised intensity is in the top 2% at the low resolution: a part of
    # the scan the coarse pass surely finds
    coarse_image = preprocess_case(ct, None, plan.for_configuration("3d_lowres"), case_id="s")
    threshold = float(np.quantile(coarse_image.image, 0.98))
    full, coarse = _Pointwise(threshold, 6), _Pointwise(threshold, 6)
    members = [ModelMember(full, "3d"), ModelMember(coarse, "3d_lowres")]
    model = PackagedModel(members=members, plan=plan, label_names=plan.label_names, source="m")
    model = model.for_prediction(fast=False)
    assert [m.configuration for m in model.members] == ["3d"]
    assert model.coarse is not None
    assert [m.configuration for m in model.coarse.members] == ["3d_lowres"]
    liver = PredictionOptions(structures=["liver"])
    assert model.members_to_run(liver) == [*model.members, *model.coarse.members]
    assert model.members_to_run(PredictionOptions()) == model.members
    everywhere = predict_scan(ct, replace(model, coarse=None), options=liver)
    whole_scan, full.voxels = full.voxels, 0
    cascade = predict_scan(ct, model, options=liver)
    box = cascade_box(ct, model.coarse, [1], options=liver, case_id="s")
    assert box is not None and cascade.same_grid(ct) and coarse.voxels > 0
    # the box, found on the coarse grid, holds the liver the coarse pass puts on the scan's
    # grid with its margin (but a voxel: the two grids' boundaries differ by part of a voxel)
    found = predict_scan(ct, model.coarse, options=liver)
    on_scan = structures_box(found, [1], margin_mm=CASCADE_MARGIN_MM)
    assert on_scan is not None
    for (start, stop), (scan_start, scan_stop) in zip(box, on_scan, strict=True):
        assert start <= scan_start + 1 and stop >= scan_stop - 1, (box, on_scan)
    assert 0 < full.voxels < 0.8 * whole_scan, (full.voxels, whole_scan, box)
    # pointwise networks: inside the box the cascade labels the voxels as the whole-scan
    # prediction does (but where other window overlaps round the float16 means across the
    # threshold); outside it is background
    inside = tuple(slice(start, stop) for start, stop in box)
    assert np.mean(cascade.array[inside] != everywhere.array[inside]) < 1e-3
    assert cascade.array.sum() == cascade.array[inside].sum()
    assert (cascade.array == 1).sum() > 20
