"""Tiny 3D networks that packaging tests rebuild by import path (``tests.tiny_network:build``)."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """Two 3D convolutions; optionally returns ``[full, half]`` like deep supervision."""

    def __init__(self, in_channels: int, out_channels: int, deep_supervision: bool) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv3d(in_channels, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Conv3d(4, out_channels, 1)
        self.deep_supervision = deep_supervision

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        logits = self.head(self.features(x))
        if self.deep_supervision:
            return [logits, nn.functional.avg_pool3d(logits, 2)]
        return logits


def build(in_channels: int, out_channels: int, deep_supervision: bool = False) -> TinyNet:
    """A ``TinyNet`` with random weights (seed the caller's RNG for reproducibility)."""
    return TinyNet(in_channels, out_channels, deep_supervision)
