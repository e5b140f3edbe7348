"""Residual-encoder U-Net, 2D and 3D: the preset of nnU-Net's ResEnc M planner.

The encoder is a stem (one 3x3(x3) convolution, instance normalization, leaky ReLU) followed by
one stage per level of the plan; stage ``k`` stacks ``blocks_per_stage[k]`` residual basic
blocks (ResEnc M: 1, 3, 4, 6, 6, 6, ...), the first of which downsamples by the plan's stride
``pool_strides[k - 1]`` (stage 0 keeps the full resolution; anisotropic strides allowed). A
block computes ``act(norm(conv(act(norm(conv(x))))) + skip(x))``; the skip is the identity, or,
where the block changes the shape, an average pooling by the stride (ResNet-D, as nnU-Net's
``BasicBlockD``) and a 1x1(x1) convolution with instance normalization. The decoder is plain:
per level, a transposed convolution (kernel = stride) upsamples, the encoder's features of that
level are concatenated and one convolution block mixes them. Filters double per level from
``base_filters`` up to ``max_filters`` (320 in 3D, 512 in 2D), as the U-Net.

Deep supervision follows :mod:`medseg.models.unet`: in training mode a list of logits, full
resolution first, then ``levels - 3`` (at least one) auxiliary heads of the next coarser decoder
levels, interpolated (nearest) to full resolution; none with two levels or fewer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv, Norm, Pool
from torch import nn
from torch.nn import functional

from medseg.errors import ArchitectureError
from medseg.models.encoders import ConvNormAct, level_filters
from medseg.models.unet import deep_supervision_heads

RESENC_M_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)
"""Residual blocks per encoder stage of nnU-Net's ResEnc M preset (enough for 13 levels)."""

_CONVOLUTIONS = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _conv_norm(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    *,
    kernel_size: int,
    stride: Sequence[int] | int = 1,
) -> nn.Sequential:
    """Convolution (same padding, no bias) and instance normalization, no activation."""
    conv = Conv[Conv.CONV, spatial_dims](
        in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
    )
    norm = Norm[Norm.INSTANCE, spatial_dims](out_channels, affine=True)
    return nn.Sequential(OrderedDict(conv=conv, norm=norm))


class ResidualBlock(nn.Module):
    """Basic residual block: two 3x3(x3) convolutions, the first strided, plus a skip.

    ``conv1`` is convolution, normalization, leaky ReLU; ``conv2`` convolution and normalization;
    their sum with ``skip(x)`` goes through a last leaky ReLU. ``skip`` is the identity when the
    block keeps the shape, else average pooling by ``stride`` (if strided) and a 1x1(x1)
    convolution with normalization (if the channels change).
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, stride: Sequence[int]
    ) -> None:
        super().__init__()
        stride = tuple(stride)
        self.conv1 = _conv_norm(
            spatial_dims, in_channels, out_channels, kernel_size=3, stride=stride
        )
        self.conv1.add_module("act", nn.LeakyReLU(negative_slope=0.01, inplace=True))
        self.conv2 = _conv_norm(spatial_dims, out_channels, out_channels, kernel_size=3)
        skip: list[nn.Module] = []
        if any(step != 1 for step in stride):
            skip.append(Pool[Pool.AVG, spatial_dims](kernel_size=stride, stride=stride))
        if in_channels != out_channels:
            skip.append(_conv_norm(spatial_dims, in_channels, out_channels, kernel_size=1))
        self.skip = nn.Sequential(*skip) if skip else nn.Identity()
        self.act = nn.LeakyReLU(negative_slope=0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.skip(x))


class ResidualEncoder(nn.Module):
    """Stem and one stage of residual blocks per level; returns every stage's features."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        filters: Sequence[int],
        strides: Sequence[Sequence[int]],
        blocks: Sequence[int],
    ) -> None:
        super().__init__()
        self.stem = ConvNormAct(spatial_dims, in_channels, filters[0])
        stages = []
        channels = filters[0]
        for out_channels, stride, count in zip(filters, strides, blocks, strict=True):
            stage = [ResidualBlock(spatial_dims, channels, out_channels, stride)]
            stage += [
                ResidualBlock(spatial_dims, out_channels, out_channels, [1] * spatial_dims)
                for _ in range(count - 1)
            ]
            stages.append(nn.Sequential(*stage))
            channels = out_channels
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class ResEncUNet(nn.Module):
    """Residual-encoder U-Net (nnU-Net ResEnc M) whose levels follow ``pool_strides``.

    Args:
        in_channels: image channels.
        num_classes: output channels (logits).
        pool_strides: the plan's per-level strides (one downsampling stage each).
        spatial_dims: 2 or 3.
        deep_supervision: training-mode output is a list of logits (as ``unet``).
        base_filters: filters of the first level, doubling per level.
        max_filters: cap of the filters (default 320 in 3D, 512 in 2D).
        blocks_per_stage: residual blocks of each encoder stage, full resolution first (at least
            one entry per level; entries beyond the levels are unused).

    Raises:
        ArchitectureError: fewer ``blocks_per_stage`` than levels, or a count below 1.
    """

    encoder_prefixes: tuple[str, ...] = ("encoder.",)

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        pool_strides: list[list[int]],
        spatial_dims: int,
        deep_supervision: bool = True,
        base_filters: int = 32,
        max_filters: int | None = None,
        blocks_per_stage: Sequence[int] = RESENC_M_BLOCKS,
    ) -> None:
        super().__init__()
        levels = len(pool_strides) + 1
        blocks = list(blocks_per_stage)[:levels]
        if len(blocks) < levels or min(blocks) < 1:
            raise ArchitectureError(
                f"resenc_unet needs blocks_per_stage of at least {levels} positive counts "
                f"(one per level of the plan); got {list(blocks_per_stage)}"
            )
        self.blocks_per_stage = tuple(blocks)
        filters = level_filters(
            levels, spatial_dims=spatial_dims, base_filters=base_filters, max_filters=max_filters
        )
        strides = [[1] * spatial_dims, *pool_strides]
        self.encoder = ResidualEncoder(spatial_dims, in_channels, filters, strides, blocks)
        transposed = Conv[Conv.CONVTRANS, spatial_dims]
        self.upsamplings = nn.ModuleList(
            transposed(filters[level + 1], filters[level], stride, stride=stride, bias=False)
            for level, stride in enumerate(pool_strides)
        )
        self.decoder = nn.ModuleList(
            ConvNormAct(spatial_dims, 2 * filters[level], filters[level])
            for level in range(levels - 1)
        )
        self.auxiliary_heads = deep_supervision_heads(levels, deep_supervision)
        self.heads = nn.ModuleList(
            Conv[Conv.CONV, spatial_dims](filters[level], num_classes, 1)
            for level in range(1 + self.auxiliary_heads)
        )
        for module in self.modules():
            if isinstance(module, _CONVOLUTIONS):
                nn.init.kaiming_normal_(module.weight, a=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def deep_supervision(self) -> bool:
        """Whether training-mode output is a list of logits."""
        return self.auxiliary_heads > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        features = self.encoder(x)
        y = features[-1]
        decoded = [y] * len(features)
        for level in reversed(range(len(self.decoder))):
            y = self.upsamplings[level](y)
            y = self.decoder[level](torch.cat([y, features[level]], dim=1))
            decoded[level] = y
        logits = self.heads[0](decoded[0])
        if not (self.training and self.deep_supervision):
            return logits
        size = logits.shape[2:]
        auxiliary = [
            functional.interpolate(head(decoded[level]), size=size)
            for level, head in enumerate(self.heads)
            if level > 0
        ]
        return [logits, *auxiliary]
