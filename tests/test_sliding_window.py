"""Sliding-window prediction: coverage, Gaussian weights, padding, mirroring."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medseg.sliding_window import (
    gaussian_importance,
    predict_probabilities,
    sliding_window_predict,
    window_starts,
)


class ThresholdNet(nn.Module):
    """Logits [0, x]: class 1 wherever the intensity is positive; translation equivariant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x[:, :1]), 10 * x[:, :1]], dim=1)


@pytest.mark.parametrize(
    ("size", "patch", "overlap", "expected"),
    [
        (10, 10, 0.5, [0]),
        (5, 8, 0.5, [0]),
        (20, 8, 0.5, [0, 4, 8, 12]),
        (21, 8, 0.5, [0, 3, 6, 10, 13]),
    ],
)
def test_window_starts_cover_the_axis(
    size: int, patch: int, overlap: float, expected: list[int]
) -> None:
    starts = window_starts(size, patch, overlap=overlap)
    assert starts == expected
    assert starts[-1] + patch >= size


def test_gaussian_is_one_at_the_centre_and_positive_at_the_corners() -> None:
    weights = gaussian_importance((9, 8, 7))
    assert float(weights[4, 3:5, 3].max()) <= 1.0 and float(weights[4, 4, 3]) > 0.95
    assert float(weights.min()) > 0
    # sigma = size / 8 = 8 voxels for 64, centre at 31.5
    profile = gaussian_importance((64,))
    expected = torch.exp(torch.tensor(-((39 - 31.5) ** 2 - (31 - 31.5) ** 2) / (2 * 8.0**2)))
    assert float(profile[39] / profile[31]) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("shape", [(1, 40, 37, 23), (1, 6, 50, 20), (1, 33, 29)])
def test_equivariant_network_gives_the_same_result_as_one_big_window(
    shape: tuple[int, ...],
) -> None:
    image = torch.randn(shape)
    patch = (16,) * (len(shape) - 1)
    probabilities = sliding_window_predict(
        ThresholdNet(), image, patch_size=patch, num_classes=2, batch_size=3
    )
    assert probabilities.shape == (2, *shape[1:])
    assert torch.allclose(probabilities.sum(0), torch.ones(shape[1:]), atol=1e-5)
    assert torch.allclose(
        probabilities, torch.softmax(ThresholdNet()(image[None]), 1)[0], atol=1e-5
    )


def test_mirroring_an_equivariant_network_changes_nothing() -> None:
    image = torch.randn(1, 20, 18, 12)
    plain = sliding_window_predict(ThresholdNet(), image, patch_size=(8, 8, 8), num_classes=2)
    mirrored = sliding_window_predict(
        ThresholdNet(), image, patch_size=(8, 8, 8), num_classes=2, mirror_axes=(0, 1, 2)
    )
    assert torch.allclose(plain, mirrored, atol=1e-5)


@pytest.mark.parametrize("slice_axis", [None, 0, 1, 2])
def test_predict_probabilities_3d_or_slice_by_slice(slice_axis: int | None) -> None:
    image = torch.randn(1, 12, 10, 9)
    patch = (8, 8, 8) if slice_axis is None else (8, 8)
    probabilities = predict_probabilities(
        ThresholdNet(), image, patch_size=patch, num_classes=2, slice_axis=slice_axis, mirror=True
    )
    assert torch.allclose(
        probabilities, torch.softmax(ThresholdNet()(image[None]), 1)[0], atol=1e-5
    )


@pytest.mark.parametrize(
    ("size", "patch", "expected"), [(100, 40, [0, 30, 60]), (80, 40, [0, 30, 40]), (30, 40, [0])]
)
def test_monai_placement_steps_from_the_start(size: int, patch: int, expected: list[int]) -> None:
    assert window_starts(size, patch, overlap=0.25, placement="monai") == expected
