"""Inputs and reference values shared by the loss tests."""

from __future__ import annotations

import math

import pytest
import torch

LN = math.log
SMOOTH = 1e-5


def _dice(overlap: float, sizes: float) -> float:
    """Smoothed Dice of one class: (2 * sum(p * g) + s) / (sum(p) + sum(g) + s)."""
    return (2 * overlap + SMOOTH) / (sizes + SMOOTH)


def _random_inputs(
    shape: tuple[int, ...], seed: int, *, absent_class: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, K, *spatial) and target (B, *spatial); optionally class K-1 never present."""
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(shape, generator=generator)
    n_labels = shape[1] - 1 if absent_class else shape[1]
    target = torch.randint(0, n_labels, (shape[0], *shape[2:]), generator=generator)
    return logits, target


SHAPES = [pytest.param((2, 3, 8, 7), id="2d"), pytest.param((2, 4, 6, 5, 4), id="3d")]
