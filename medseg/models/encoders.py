"""VGG-style convolutional encoder shared by FCN, PSPNet and DeepLabv3, and their common parts.

The encoder has one stage per level of the plan: stage 0 at full resolution, then stage k
max-pools by ``pool_strides[k - 1]`` (anisotropic strides allowed) before its two convolutions
(3x3(x3), instance normalization, leaky ReLU, as the U-Net). Filters double per level from
``base_filters`` up to ``max_filters``. A *dilated* encoder (Yu & Koltun 2016; DeepLab, PSPNet)
skips the pooling of its deepest ``dilated_levels`` stages and dilates their convolutions by the
strides it skipped instead: the receptive field grows as with pooling while the deepest features
keep a finer resolution (a smaller output stride).

Pooling and dilation have no parameters, so every encoder built with the same ``in_channels``,
``pool_strides`` depth, ``spatial_dims``, ``base_filters`` and ``max_filters`` has the same
state_dict keys (``encoder.stages.<level>.conv<1|2>.*``) and shapes, dilated or not: encoder
weights transfer between ``fcn32s``/``fcn16s``/``fcn8s``, ``pspnet`` and ``deeplabv3`` (the
U-Nets have their own, strided-convolution encoder).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv, Norm, Pool
from torch import nn
from torch.nn import functional

from medseg.errors import ArchitectureError

LINEAR_MODE = {2: "bilinear", 3: "trilinear"}
"""``torch.nn.functional.interpolate`` mode of linear interpolation per number of spatial axes."""


def level_filters(
    levels: int, *, spatial_dims: int, base_filters: int, max_filters: int | None
) -> list[int]:
    """Filters per level: doubling from ``base_filters``, capped at ``max_filters``.

    ``max_filters`` defaults to 320 in 3D and 512 in 2D, as nnU-Net.
    """
    ceiling = max_filters or (320 if spatial_dims == 3 else 512)
    return [min(base_filters * 2**level, ceiling) for level in range(levels)]


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bi- or trilinear interpolation of ``x`` (B, C, *spatial) to the spatial ``size``."""
    mode = LINEAR_MODE[x.ndim - 2]
    return functional.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


class ConvNormAct(nn.Sequential):
    """Convolution (same padding, no bias), instance normalization, leaky ReLU."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 3,
        dilation: Sequence[int] | int = 1,
    ) -> None:
        dilation = _per_axis(dilation, spatial_dims)
        padding = tuple(rate * (kernel_size // 2) for rate in dilation)
        conv = Conv[Conv.CONV, spatial_dims](
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        )
        super().__init__(
            OrderedDict(
                conv=conv,
                norm=Norm[Norm.INSTANCE, spatial_dims](out_channels, affine=True),
                act=nn.LeakyReLU(negative_slope=0.01, inplace=True),
            )
        )


class Encoder(nn.Module):
    """Plain or dilated VGG-style encoder whose levels follow ``pool_strides``.

    Args:
        in_channels: image channels.
        pool_strides: per-level strides of the plan (one pooling level per entry).
        spatial_dims: 2 or 3.
        base_filters: filters of the full-resolution stage.
        max_filters: cap of the filters (default 320 in 3D, 512 in 2D).
        dilated_levels: how many of the deepest levels dilate instead of pooling.

    Raises:
        ArchitectureError: strides that do not match ``spatial_dims`` or too many dilated levels.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        pool_strides: Sequence[Sequence[int]],
        spatial_dims: int,
        base_filters: int = 32,
        max_filters: int | None = None,
        dilated_levels: int = 0,
    ) -> None:
        super().__init__()
        _check_strides(pool_strides, spatial_dims)
        self.spatial_dims = spatial_dims
        if not 0 <= dilated_levels <= len(pool_strides):
            raise ArchitectureError(
                f"dilated_levels must be between 0 and the {len(pool_strides)} levels of "
                f"pool_strides; got {dilated_levels}"
            )
        self.filters = level_filters(
            len(pool_strides) + 1,
            spatial_dims=spatial_dims,
            base_filters=base_filters,
            max_filters=max_filters,
        )
        pooled_levels = len(pool_strides) - dilated_levels
        dilation = [1] * spatial_dims
        stages = []
        channels = in_channels
        for level, width in enumerate(self.filters):
            pool: nn.Module = nn.Identity()
            if 0 < level <= pooled_levels:
                stride = tuple(pool_strides[level - 1])
                pool = Pool[Pool.MAX, spatial_dims](kernel_size=stride, stride=stride)
            elif level > pooled_levels:
                dilation = [
                    rate * step
                    for rate, step in zip(dilation, pool_strides[level - 1], strict=True)
                ]
            layers: OrderedDict[str, nn.Module] = OrderedDict(pool=pool)
            for index in (1, 2):
                layers[f"conv{index}"] = ConvNormAct(
                    spatial_dims, channels, width, dilation=dilation
                )
                channels = width
            stages.append(nn.Sequential(layers))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features of every stage, full resolution first."""
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def dilated_levels_for(pool_strides: Sequence[Sequence[int]], output_stride: int | None) -> int:
    """Number of deepest levels to dilate so no axis is strided by more than ``output_stride``.

    ``None`` dilates the deepest level only (DeepLabv3's output stride 16 on its ResNet: half
    the total stride). Medical patches are small, so the plan's total stride is often 8 or less:
    then ``output_stride`` 8 or 16 dilates nothing and the encoder is the plain one.

    Raises:
        ArchitectureError: ``output_stride`` below 1.
    """
    if output_stride is None:
        return min(1, len(pool_strides))
    if output_stride < 1:
        raise ArchitectureError(f"output_stride must be at least 1; got {output_stride}")
    levels = len(pool_strides)
    # cumulative strides only grow, so the levels within output_stride are the shallowest ones
    pooled = sum(
        _largest_stride(pool_strides[:level]) <= output_stride for level in range(1, levels + 1)
    )
    return levels - pooled


class ContextHeadNetwork(nn.Module):
    """A (dilated) encoder, a context head on its deepest features and a 1x1 classifier.

    The logits are resized (bi/trilinear) to the input size. Subclasses build the parts.
    """

    deep_supervision = False
    encoder_prefixes: tuple[str, ...] = ("encoder.",)

    def __init__(
        self, *, encoder: Encoder, head: nn.Module, head_channels: int, num_classes: int
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.classifier = Conv[Conv.CONV, encoder.spatial_dims](head_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.head(self.encoder(x)[-1]))
        return resize(logits, x.shape[2:])


def _largest_stride(pool_strides: Sequence[Sequence[int]]) -> int:
    return max(math.prod(axis) for axis in zip(*pool_strides, strict=True))


def _per_axis(value: Sequence[int] | int, spatial_dims: int) -> tuple[int, ...]:
    return (value,) * spatial_dims if isinstance(value, int) else tuple(value)


def _check_strides(pool_strides: Sequence[Sequence[int]], spatial_dims: int) -> None:
    if spatial_dims not in LINEAR_MODE:
        raise ArchitectureError(f"spatial_dims must be 2 or 3; got {spatial_dims}")
    for level, stride in enumerate(pool_strides, start=1):
        if len(stride) != spatial_dims or any(int(step) < 1 for step in stride):
            raise ArchitectureError(
                f"pool_strides level {level} is {list(stride)}: expected {spatial_dims} "
                "positive integers (one per spatial axis)"
            )
