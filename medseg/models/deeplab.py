"""DeepLabv3 (Chen et al. 2017): atrous spatial pyramid pooling on a dilated encoder.

The head (ASPP) runs on the deepest features of the dilated encoder
(``medseg.models.encoders``): a 1x1 convolution, one 3x3(x3) convolution per atrous ``rates``
entry (default 6, 12, 18), and image-level pooling (global average, 1x1 convolution, broadcast
back), concatenated and projected by a 1x1 convolution; a 1x1 classifier gives logits, resized
(bi/trilinearly) to the input size. The image-pooling branch has no normalization: instance
normalization of a single value is undefined.

Rates for small medical patches: the paper's rates suit feature maps of 33x33 (513-pixel crops
at output stride 16), while a hippocampus patch has 10x14x10 at output stride 4. A tap dilated
by ``r`` along an axis of size ``n`` falls inside the map only if ``r < n``; with larger rates
the 3x3 filter degenerates to its centre tap, a 1x1 convolution, as the paper observes. So,
along every axis where the largest rate is not below the size, all rates are scaled by
``(n - 1) / largest`` and rounded (at least 1): the branches keep their ratios and the widest
one just spans the map. The rates in effect follow from the feature map size (fixed by the
patch) and are computed in ``forward``; see :func:`fit_rates`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv, Norm
from torch import nn
from torch.nn import functional

from medseg.errors import ArchitectureError
from medseg.models.encoders import ContextHeadNetwork, ConvNormAct, Encoder, dilated_levels_for

_CONVOLUTION = {2: functional.conv2d, 3: functional.conv3d}


def fit_rates(rates: Sequence[int], size: Sequence[int]) -> list[tuple[int, ...]]:
    """Per-axis dilation of each atrous branch for a feature map of spatial ``size``.

    Along an axis of size ``n`` the rates stay as configured if the largest is below ``n``;
    otherwise each becomes ``max(1, round(rate * (n - 1) / largest))``.

    Example:
        >>> fit_rates((6, 12, 18), (10, 14, 40))
        [(3, 4, 6), (6, 9, 12), (9, 13, 18)]
    """
    largest = max(rates)
    per_axis = [
        [rate if largest < n else max(1, round(rate * (n - 1) / largest)) for rate in rates]
        for n in size
    ]
    return [tuple(axis[branch] for axis in per_axis) for branch in range(len(rates))]


class AtrousConvNormAct(nn.Module):
    """3x3(x3) convolution whose dilation is given per call, instance norm, leaky ReLU."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, 3, bias=False)
        self.norm = Norm[Norm.INSTANCE, spatial_dims](out_channels, affine=True)
        self.act = nn.LeakyReLU(negative_slope=0.01, inplace=True)

    def forward(self, x: torch.Tensor, dilation: tuple[int, ...]) -> torch.Tensor:
        convolve = _CONVOLUTION[x.ndim - 2]
        y = convolve(x, self.conv.weight, None, 1, dilation, dilation)
        return self.act(self.norm(y))


class AtrousSpatialPyramidPooling(nn.Module):
    """ASPP: 1x1, atrous 3x3(x3) per rate and image-pooling branches, concatenated, projected."""

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, rates: Sequence[int]
    ) -> None:
        super().__init__()
        if not rates or min(rates) < 1:
            raise ArchitectureError(f"deeplabv3 rates must be positive integers; got {list(rates)}")
        self.rates = tuple(rates)
        self.pointwise = ConvNormAct(spatial_dims, in_channels, out_channels, kernel_size=1)
        self.atrous = nn.ModuleList(
            AtrousConvNormAct(spatial_dims, in_channels, out_channels) for _ in self.rates
        )
        self.image_pooling = nn.Sequential(
            OrderedDict(
                conv=Conv[Conv.CONV, spatial_dims](in_channels, out_channels, 1),
                act=nn.LeakyReLU(negative_slope=0.01, inplace=True),
            )
        )
        branches = len(self.rates) + 2
        self.project = ConvNormAct(
            spatial_dims, branches * out_channels, out_channels, kernel_size=1
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        size = features.shape[2:]
        spatial_axes = tuple(range(2, features.ndim))
        image = self.image_pooling(features.mean(dim=spatial_axes, keepdim=True))
        branches = [
            self.pointwise(features),
            *(
                branch(features, dilation)
                for branch, dilation in zip(self.atrous, fit_rates(self.rates, size), strict=True)
            ),
            image.expand(-1, -1, *size),
        ]
        return self.project(torch.cat(branches, dim=1))


class DeepLabV3(ContextHeadNetwork):
    """DeepLabv3 on the shared dilated encoder.

    Args:
        in_channels: image channels.
        num_classes: output channels (logits).
        pool_strides: per-level strides of the plan.
        spatial_dims: 2 or 3.
        rates: atrous rates of the 3x3(x3) branches, fitted to the feature map size (module
            docstring).
        output_stride: largest encoder stride along any axis (the paper uses 8 or 16); deeper
            levels dilate instead of pooling. ``None``: only the deepest level dilates.
        head_filters: ASPP channels (default: the deepest encoder filters).
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
        rates: Sequence[int] = (6, 12, 18),
        output_stride: int | None = None,
        head_filters: int | None = None,
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
        width = head_filters or encoder.filters[-1]
        head = AtrousSpatialPyramidPooling(spatial_dims, encoder.filters[-1], width, rates)
        super().__init__(encoder=encoder, head=head, head_channels=width, num_classes=num_classes)
