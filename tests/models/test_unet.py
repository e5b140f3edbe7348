"""U-Nets built from plan configurations."""

from __future__ import annotations

import pytest
import torch

from medseg.models import build_network, network_arguments


@pytest.mark.parametrize(
    ("patch", "strides", "deep"),
    [
        ([40, 56, 40], [[2, 2, 2], [2, 2, 2], [2, 2, 2]], 1),
        ([32, 32, 16], [[2, 2, 2], [2, 2, 2], [2, 2, 1], [2, 2, 1]], 2),
        ([40, 56], [[2, 2], [2, 2], [2, 2]], 1),
    ],
)
def test_network_fits_the_plan_patch(patch: list[int], strides: list[list[int]], deep: int) -> None:
    arguments = network_arguments(
        architecture="unet",
        in_channels=1,
        num_classes=3,
        configuration={"patch_size": patch, "pool_strides": strides},
        base_filters=8,
    )
    network = build_network(**arguments)
    x = torch.randn(1, 1, *patch)
    outputs = network.train()(x)
    assert isinstance(outputs, list) and len(outputs) == 1 + deep
    assert all(o.shape == (1, 3, *patch) for o in outputs)
    assert network.eval()(x).shape == (1, 3, *patch)
    outputs = network.train()(x)
    sum(o.mean() for o in outputs).backward()
    assert all(p.grad is not None for p in network.parameters() if p.requires_grad)


def test_filters_double_and_are_capped() -> None:
    network = build_network(
        architecture="unet",
        in_channels=1,
        num_classes=2,
        spatial_dims=3,
        pool_strides=[[2, 2, 2]] * 5,
        base_filters=32,
    )
    assert network.network.filters == [32, 64, 128, 256, 320, 320]
