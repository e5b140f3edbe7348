"""PSPNet (Zhao et al. 2017): a pyramid pooling head on a dilated encoder.

The deepest features of the dilated encoder (``medseg.models.encoders``) are average-pooled to
``bins`` x ``bins`` (x ``bins``) cells per bin size (default 1, 2, 3, 6), each pooled map is
reduced by a 1x1 convolution to ``1/len(bins)`` of the channels, upsampled (bi/trilinearly) back
and concatenated with the features; a 3x3(x3) convolution fuses them and a 1x1 classifier gives
logits, resized to the input size. Bins larger than the feature map along an axis are clipped
to its size. The pooled branches have no normalization: instance normalization of a single
cell (bin 1) is undefined. No auxiliary loss and no dropout, like the project's U-Net.

Pooling is computed as one averaging-matrix product per axis, with the same windows as
``adaptive_avg_pool``: ONNX has no adaptive pooling and the exporter cannot decompose
``adaptive_avg_pool3d``, while matrix products export for any sizes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv
from torch import nn

from medseg.errors import ArchitectureError
from medseg.models.encoders import (
    ContextHeadNetwork,
    ConvNormAct,
    Encoder,
    dilated_levels_for,
    resize,
)


def adaptive_average_pool(x: torch.Tensor, output_size: Sequence[int]) -> torch.Tensor:
    """Average-pool ``x`` (B, C, *spatial) to ``output_size``, windows as ``adaptive_avg_pool``.

    Cell ``i`` of ``n`` along an axis of length ``L`` averages ``[floor(i L / n), ceil((i + 1) L
    / n))``; averaging over a box is separable, so one matrix product per axis computes it.
    """
    for axis, cells in enumerate(output_size, start=2):
        length = x.shape[axis]
        positions = torch.arange(length, device=x.device)
        index = torch.arange(cells, device=x.device)
        starts = (index * length) // cells
        ends = ((index + 1) * length + cells - 1) // cells
        inside = (positions >= starts[:, None]) & (positions < ends[:, None])
        averaging = inside.to(x.dtype) / (ends - starts)[:, None].to(x.dtype)
        x = torch.movedim(torch.movedim(x, axis, -1) @ averaging.T, -1, axis)
    return x


class PyramidPooling(nn.Module):
    """Features concatenated with their pooled, projected and upsampled pyramid."""

    def __init__(self, spatial_dims: int, in_channels: int, bins: Sequence[int]) -> None:
        super().__init__()
        if not bins or min(bins) < 1:
            raise ArchitectureError(f"pspnet bins must be positive integers; got {list(bins)}")
        self.bins = tuple(bins)
        branch_channels = max(1, in_channels // len(self.bins))
        self.branches = nn.ModuleList(
            nn.Sequential(
                OrderedDict(
                    conv=Conv[Conv.CONV, spatial_dims](in_channels, branch_channels, 1),
                    act=nn.LeakyReLU(negative_slope=0.01, inplace=True),
                )
            )
            for _ in self.bins
        )
        self.out_channels = in_channels + branch_channels * len(self.bins)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        size = features.shape[2:]
        pyramid = [
            resize(branch(adaptive_average_pool(features, [min(b, s) for s in size])), size)
            for b, branch in zip(self.bins, self.branches, strict=True)
        ]
        return torch.cat([features, *pyramid], dim=1)


class PSPNet(ContextHeadNetwork):
    """Pyramid scene parsing network on the shared dilated encoder.

    Args:
        in_channels: image channels.
        num_classes: output channels (logits).
        pool_strides: per-level strides of the plan.
        spatial_dims: 2 or 3.
        bins: cells per axis of each pyramid level.
        output_stride: largest encoder stride along any axis; deeper levels dilate instead of
            pooling. ``None``: only the deepest level dilates.
        base_filters: encoder filters at full resolution (doubling per level).
        max_filters: cap of the encoder filters (default 320 in 3D, 512 in 2D).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        pool_strides: list[list[int]],
        spatial_dims: int,
        bins: Sequence[int] = (1, 2, 3, 6),
        output_stride: int | None = None,
        base_filters: int = 32,
        max_filters: int | None = None,
    ) -> None:
        encoder = Encoder(
            in_channels=in_channels,
            pool_strides=pool_strides,
            spatial_dims=spatial_dims,
            base_filters=base_filters,
            max_filters=max_filters,
            dilated_levels=dilated_levels_for(pool_strides, output_stride),
        )
        width = encoder.filters[-1]
        pyramid = PyramidPooling(spatial_dims, width, bins)
        head = nn.Sequential(
            OrderedDict(
                pyramid=pyramid,
                fuse=ConvNormAct(spatial_dims, pyramid.out_channels, width, kernel_size=3),
            )
        )
        super().__init__(encoder=encoder, head=head, head_channels=width, num_classes=num_classes)
