"""Fully convolutional networks (Long, Shelhamer & Darrell 2015): FCN-32s, FCN-16s, FCN-8s.

A VGG-style encoder (``medseg.models.encoders``) whose stages follow the plan, then the
convolutionalised fully connected layers (``classifier``: a 3x3(x3) and a 1x1 convolution, the
paper's fc6/fc7 sized for small medical feature maps) and 1x1 score layers. Scores are upsampled
by learned transposed convolutions initialised to bi/trilinear interpolation, as in the paper.
FCN-32s scores only the deepest features and upsamples by the total stride; FCN-16s upsamples
the deep score by the deepest level's stride, adds the score of the stage one level shallower
and upsamples the sum by the remaining stride; FCN-8s adds one more such skip. The skip score
layers start at zero (as in the paper), so training starts from the coarser net's predictions.
The names keep the paper's; the actual strides are the plan's (FCN-32s on a plan of total
stride 8 upsamples by 8).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from monai.networks.layers.factories import Conv
from torch import nn

from medseg.errors import ArchitectureError
from medseg.models.encoders import ConvNormAct, Encoder

FcnVariant = Literal["fcn32s", "fcn16s", "fcn8s"]
FCN_SKIPS: dict[FcnVariant, int] = {"fcn32s": 0, "fcn16s": 1, "fcn8s": 2}
"""Skip connections of each FCN variant."""


def bilinear_upsampling(
    spatial_dims: int, channels: int, factor: Sequence[int]
) -> nn.ConvTranspose2d | nn.ConvTranspose3d:
    """Transposed convolution that upsamples each channel by ``factor`` (per axis) exactly.

    Kernel ``2f - f % 2`` and padding ``f // 2`` along an axis of factor ``f`` map a size ``n``
    to ``n * f``. The weights start as separable linear interpolation (half-pixel centres, as
    ``align_corners=False``) from each channel to itself, and zero between channels.
    """
    kernel = [2 * step - step % 2 for step in factor]
    upsampling = Conv[Conv.CONVTRANS, spatial_dims](
        channels,
        channels,
        kernel_size=tuple(kernel),
        stride=tuple(factor),
        padding=tuple(step // 2 for step in factor),
        bias=False,
    )
    weights = torch.ones(kernel)
    for axis, (size, step) in enumerate(zip(kernel, factor, strict=True)):
        taps = 1 - (torch.arange(size) - (size - 1) / 2).abs() / step
        shape = [1] * spatial_dims
        shape[axis] = size
        weights = weights * taps.reshape(shape)
    with torch.no_grad():
        upsampling.weight.zero_()
        for channel in range(channels):
            upsampling.weight[channel, channel] = weights
    return upsampling


class FCN(nn.Module):
    """FCN-32s, -16s or -8s on the shared VGG-style encoder.

    Args:
        variant: ``"fcn32s"``, ``"fcn16s"`` or ``"fcn8s"`` (0, 1 or 2 skip connections).
        in_channels: image channels.
        num_classes: output channels (logits).
        pool_strides: per-level strides of the plan.
        spatial_dims: 2 or 3.
        base_filters: encoder filters at full resolution (doubling per level).
        max_filters: cap of the encoder filters (default 320 in 3D, 512 in 2D).

    Raises:
        ArchitectureError: fewer levels in ``pool_strides`` than the variant's skips need.
    """

    deep_supervision = False
    encoder_prefixes: tuple[str, ...] = ("encoder.",)

    def __init__(
        self,
        *,
        variant: FcnVariant,
        in_channels: int,
        num_classes: int,
        pool_strides: list[list[int]],
        spatial_dims: int,
        base_filters: int = 32,
        max_filters: int | None = None,
    ) -> None:
        super().__init__()
        skips = FCN_SKIPS[variant]
        levels = len(pool_strides)
        if levels < skips:
            raise ArchitectureError(
                f"{variant} needs at least {skips} downsampling levels (entries of pool_strides) "
                f"for its {skips} skip connection(s); the plan has {levels}"
            )
        self.encoder = Encoder(
            in_channels=in_channels,
            pool_strides=pool_strides,
            spatial_dims=spatial_dims,
            base_filters=base_filters,
            max_filters=max_filters,
        )
        deepest = self.encoder.filters[-1]
        self.classifier = nn.Sequential(
            ConvNormAct(spatial_dims, deepest, deepest, kernel_size=3),
            ConvNormAct(spatial_dims, deepest, deepest, kernel_size=1),
        )
        score = Conv[Conv.CONV, spatial_dims]
        skip_channels = [self.encoder.filters[levels - skip] for skip in range(1, skips + 1)]
        self.scores = nn.ModuleList(
            [score(deepest, num_classes, 1)] + [score(c, num_classes, 1) for c in skip_channels]
        )
        for layer in self.scores[1:]:
            for parameter in layer.parameters():  # its weight and bias
                nn.init.zeros_(parameter)
        remaining = [
            math.prod(stride[axis] for stride in pool_strides[: levels - skips])
            for axis in range(spatial_dims)
        ]
        factors = [pool_strides[levels - skip] for skip in range(1, skips + 1)] + [remaining]
        self.upsamplings = nn.ModuleList(
            bilinear_upsampling(spatial_dims, num_classes, factor) for factor in factors
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        score = self.scores[0](self.classifier(features[-1]))
        for depth, (skip_score, upsampling) in enumerate(
            zip(self.scores[1:], self.upsamplings, strict=False), start=2
        ):
            score = upsampling(score) + skip_score(features[-depth])
        return self.upsamplings[-1](score)
