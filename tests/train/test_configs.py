"""Every shipped training config validates and builds its network for a hippocampus-like plan."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest
import torch

from medseg.errors import MissingDependencyError
from medseg.models import build_network, network_arguments
from medseg.train.config import load_train_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "train").glob("*.yaml"))
PLAN_CONFIGURATIONS = {
    "3d": {"patch_size": [40, 56, 40], "pool_strides": [[2, 2, 2], [2, 2, 2], [2, 2, 2]]},
    "2d": {"patch_size": [56, 40], "pool_strides": [[2, 2], [2, 2], [2, 2]]},
}


def test_the_classic_architectures_have_example_configs() -> None:
    shipped = {load_train_config(path).architecture for path in CONFIGS}
    assert {"unet", "fcn8s", "pspnet", "deeplabv3"} <= shipped


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_config_builds_a_network_with_logits_of_the_patch_size(path: Path) -> None:
    config = load_train_config(path)
    plan_configuration = PLAN_CONFIGURATIONS[config.configuration]
    arguments = network_arguments(
        architecture=config.architecture,
        in_channels=1,
        num_classes=3,
        configuration=plan_configuration,
        **config.network,
    )
    network = build_network(**arguments).eval()
    patch = plan_configuration["patch_size"]
    with torch.no_grad():
        logits = network(torch.zeros(1, 1, *patch))
    assert tuple(logits.shape) == (1, 3, *patch)


def test_int8_without_nncf_is_refused_when_the_config_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before anything is preprocessed or trained, not when the model is packaged."""
    import_module = importlib.import_module

    def without_nncf(name: str, package: str | None = None) -> ModuleType:
        if name == "nncf":
            raise ImportError("No module named 'nncf'")
        return import_module(name, package)

    assert load_train_config(None, int8=True).int8  # installed here
    monkeypatch.setattr(importlib, "import_module", without_nncf)
    with pytest.raises(MissingDependencyError, match=r"int8 quantization .* package 'nncf'"):
        load_train_config(None, int8=True)
    assert not load_train_config(None).int8
