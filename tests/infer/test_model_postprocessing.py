"""The post-processing a model carries (``medseg select`` decides it) is applied by default on
the scan's grid, said in the model's description, and can be turned off."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.errors import ConfigError
from medseg.infer.options import PredictionOptions
from medseg.infer.postprocess import PostprocessingRules, apply_rules
from medseg.infer.predictor import PackagedModel, predict_scan
from medseg.preprocess.plan import Plan
from tests.phantom_plan import plan_phantoms
from tests.phantoms import small_phantom

# the speckled map below has 4 components of structure 3 (1-5 voxels of 36 mm³) and 6 of 4
RULES = {"structures": {"3": {"keep_largest": True}, "4": {"min_component_mm3": 500.0}}}


@pytest.fixture(scope="module")
def phantom_plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    return plan_phantoms(tmp_path_factory.mktemp("phantom_plan"))


def _speckled_net() -> torch.nn.Module:
    """Random 3x3x3 convolution: a label map full of small components of every structure."""
    torch.manual_seed(3)
    return torch.nn.Conv3d(1, 6, 3, padding=1).eval()


def _model(plan: Plan, postprocessing: dict | None) -> PackagedModel:
    network = PackagedModel.of_network(
        _speckled_net(), plan=plan, configuration="3d", label_names=plan.label_names
    )
    return PackagedModel(
        members=network.members,
        plan=plan,
        label_names=plan.label_names,
        postprocessing=postprocessing,
    )


def test_the_models_rules_are_applied_in_mm3_of_the_scan_unless_turned_off(
    phantom_plan: Plan,
) -> None:
    scan, _ = small_phantom(0)
    plain = predict_scan(scan, _model(phantom_plan, None), options=PredictionOptions()).array
    model = _model(phantom_plan, {"rules": RULES, "chosen": ["3d"]})
    assert model.description == (
        "one network (3d); post-processing from the model: label_3 keep largest, "
        "label_4 remove components < 500.0 mm³"
    )
    processed = predict_scan(scan, model, options=PredictionOptions()).array
    voxel_mm3 = float(np.prod(scan.spacing_mm))
    expected = apply_rules(plain, PostprocessingRules.model_validate(RULES), voxel_mm3=voxel_mm3)
    np.testing.assert_array_equal(processed, expected)
    changed = processed != plain
    assert set(np.unique(plain[changed])) == {3, 4} and set(np.unique(processed[changed])) == {0}
    off = predict_scan(scan, model, options=PredictionOptions(model_postprocessing=False)).array
    np.testing.assert_array_equal(off, plain)


def test_invalid_stored_rules_are_refused_when_the_model_loads(phantom_plan: Plan) -> None:
    bad = {"rules": {"structures": {"1": {"keep_largest": True, "min_component_mm3": -1}}}}
    with pytest.raises(ConfigError, match=r"postprocessing\.json: .*min_component_mm3"):
        PackagedModel(
            members=_model(phantom_plan, None).members,
            plan=phantom_plan,
            label_names=phantom_plan.label_names,
            postprocessing=bad,
        )
