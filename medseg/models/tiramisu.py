"""The one-hundred-layers Tiramisu (Jégou et al. 2017): fully convolutional DenseNets.

A 3x3(x3) convolution (``base_filters``, 48 in the paper), then per level a *dense block* (layers
of batch norm, ReLU, 3x3(x3) convolution with ``growth_rate`` (k) filters and dropout, each fed
the concatenation of the block's input and all earlier layers' outputs) whose input and new
feature maps are concatenated, kept as the skip connection and passed through a *transition
down* (norm, ReLU, 1x1 convolution, dropout, max pooling by the level's stride). A bottleneck
dense block follows. On the up path a *transition up* (3x3(x3) transposed convolution, stride
the level's) upsamples only the new feature maps of the previous block, not its input (which
keeps the number of feature maps linear in depth), concatenates them with the skip, and a dense
block follows; the last block's input and new maps go to a 1x1 classifier, as in the authors'
code. No deep supervision, like the other non-U-Net architectures.

Presets (layers per down block, bottleneck layers, k), the up path mirroring the down path:

* ``fcdensenet56``: 4 per block, bottleneck 4, k = 12.
* ``fcdensenet67``: 5 per block, bottleneck 5, k = 16.
* ``fcdensenet103``: 4, 5, 7, 10, 12, bottleneck 15, k = 16 (103 convolutions; 9.4 M
  parameters in 2D with 3 input channels and 11 classes).

The plan decides the depth: one transition down (and up) per entry of ``pool_strides``, pooling
by its strides (anisotropic ones too). A plan with fewer levels than the preset's five uses the
preset's shallowest blocks (the full-resolution ones, where the paper spends fewest layers) and
its bottleneck; a plan with more levels repeats the preset's deepest down block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from monai.networks.layers.factories import Conv, Norm, Pool
from torch import nn

from medseg.errors import ArchitectureError


@dataclass(frozen=True)
class TiramisuPreset:
    """Layers of each down block (the up path mirrors it), of the bottleneck, and k."""

    down_layers: tuple[int, ...]
    bottleneck_layers: int
    growth_rate: int


TIRAMISU_PRESETS: dict[str, TiramisuPreset] = {
    "fcdensenet56": TiramisuPreset((4, 4, 4, 4, 4), 4, 12),
    "fcdensenet67": TiramisuPreset((5, 5, 5, 5, 5), 5, 16),
    "fcdensenet103": TiramisuPreset((4, 5, 7, 10, 12), 15, 16),
}
"""The paper's FC-DenseNet 56, 67 and 103."""


def layers_for_levels(down_layers: Sequence[int], levels: int) -> list[int]:
    """Layers of the down blocks of a plan with ``levels`` poolings (see the module docstring)."""
    return [down_layers[min(level, len(down_layers) - 1)] for level in range(levels)]


NormKind = Literal["batch", "instance"]


def _norm(kind: NormKind, spatial_dims: int, channels: int) -> nn.Module:
    if kind == "batch":
        return Norm[Norm.BATCH, spatial_dims](channels)
    return Norm[Norm.INSTANCE, spatial_dims](channels, affine=True)


class NormReluConv(nn.Sequential):
    """Norm, ReLU, convolution (same padding), dropout: a dense layer or a transition's start."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        dropout: float,
        norm: NormKind,
    ) -> None:
        super().__init__()
        self.norm = _norm(norm, spatial_dims, in_channels)
        self.act = nn.ReLU(inplace=True)
        self.conv = Conv[Conv.CONV, spatial_dims](
            in_channels, out_channels, kernel_size, padding=kernel_size // 2
        )
        self.dropout = nn.Dropout(dropout)


class DenseBlock(nn.Module):
    """``layers`` dense layers; returns only their new feature maps (``out_channels`` of them).

    Each layer sees the block's input concatenated with every earlier layer's output.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        *,
        layers: int,
        growth_rate: int,
        dropout: float,
        norm: NormKind,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            NormReluConv(
                spatial_dims,
                in_channels + index * growth_rate,
                growth_rate,
                kernel_size=3,
                dropout=dropout,
                norm=norm,
            )
            for index in range(layers)
        )
        self.out_channels = layers * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new: list[torch.Tensor] = []
        for layer in self.layers:
            new.append(layer(torch.cat([x, *new], dim=1)))
        return torch.cat(new, dim=1)


class TransitionDown(nn.Sequential):
    """Norm, ReLU, 1x1 convolution (same channels), dropout, max pooling by ``stride``."""

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        stride: Sequence[int],
        *,
        dropout: float,
        norm: NormKind,
    ) -> None:
        super().__init__()
        self.features = NormReluConv(
            spatial_dims, channels, channels, kernel_size=1, dropout=dropout, norm=norm
        )
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=tuple(stride), stride=tuple(stride))


def transition_up(
    spatial_dims: int, channels: int, stride: Sequence[int]
) -> nn.ConvTranspose2d | nn.ConvTranspose3d:
    """Transposed convolution multiplying each axis' size by its ``stride`` exactly.

    Kernel 3 (the paper's) along axes of stride up to 3, else the stride; padding and output
    padding make ``n`` voxels ``n * stride`` (stride 2: kernel 3, padding 1, output padding 1).
    """
    kernels = [max(3, step) for step in stride]
    paddings = [(kernel - step + 1) // 2 for kernel, step in zip(kernels, stride, strict=True)]
    return Conv[Conv.CONVTRANS, spatial_dims](
        channels,
        channels,
        kernel_size=tuple(kernels),
        stride=tuple(stride),
        padding=tuple(paddings),
        output_padding=tuple(
            step - kernel + 2 * padding
            for step, kernel, padding in zip(stride, kernels, paddings, strict=True)
        ),
    )


class TiramisuEncoder(nn.Module):
    """First convolution, dense blocks with transitions down, and the bottleneck block."""

    def __init__(
        self,
        *,
        in_channels: int,
        pool_strides: Sequence[Sequence[int]],
        spatial_dims: int,
        down_layers: Sequence[int],
        bottleneck_layers: int,
        growth_rate: int,
        base_filters: int,
        dropout: float,
        norm: NormKind,
    ) -> None:
        super().__init__()
        self.stem = Conv[Conv.CONV, spatial_dims](in_channels, base_filters, 3, padding=1)
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        self.skip_channels: list[int] = []
        channels = base_filters
        for layers, stride in zip(down_layers, pool_strides, strict=True):
            block = DenseBlock(
                spatial_dims,
                channels,
                layers=layers,
                growth_rate=growth_rate,
                dropout=dropout,
                norm=norm,
            )
            self.blocks.append(block)
            channels += block.out_channels
            self.skip_channels.append(channels)
            self.transitions.append(
                TransitionDown(spatial_dims, channels, stride, dropout=dropout, norm=norm)
            )
        self.bottleneck = DenseBlock(
            spatial_dims,
            channels,
            layers=bottleneck_layers,
            growth_rate=growth_rate,
            dropout=dropout,
            norm=norm,
        )
        self.out_channels = channels

    def forward(self, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Skips (shallowest first), the bottleneck's input and its new feature maps."""
        x = self.stem(image)
        skips = []
        for block, transition in zip(self.blocks, self.transitions, strict=True):
            x = torch.cat([x, block(x)], dim=1)
            skips.append(x)
            x = transition(x)
        return skips, x, self.bottleneck(x)


class Tiramisu(nn.Module):
    """FC-DenseNet on the plan's levels (see the module docstring).

    Args:
        in_channels: image channels.
        num_classes: output channels (logits).
        pool_strides: per-level strides of the plan: one transition down and up each.
        spatial_dims: 2 or 3.
        down_layers: layers of each down block, one per level (the up path mirrors them).
        bottleneck_layers: layers of the bottleneck block.
        growth_rate: k, the feature maps each dense layer adds.
        base_filters: filters of the first convolution.
        dropout: dropout probability after every convolution but the first and the classifier.
        norm: ``"batch"`` (the paper's) or ``"instance"`` normalization.

    Raises:
        ArchitectureError: a stride of the wrong length or below 1, layers or k below 1, a
            dropout outside [0, 1).
    """

    deep_supervision = False
    encoder_prefixes: tuple[str, ...] = ("encoder.",)

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        pool_strides: Sequence[Sequence[int]],
        spatial_dims: int,
        down_layers: Sequence[int],
        bottleneck_layers: int,
        growth_rate: int,
        base_filters: int,
        dropout: float,
        norm: NormKind,
    ) -> None:
        super().__init__()
        _check(pool_strides, spatial_dims, [*down_layers, bottleneck_layers, growth_rate], dropout)
        self.encoder = TiramisuEncoder(
            in_channels=in_channels,
            pool_strides=pool_strides,
            spatial_dims=spatial_dims,
            down_layers=down_layers,
            bottleneck_layers=bottleneck_layers,
            growth_rate=growth_rate,
            base_filters=base_filters,
            dropout=dropout,
            norm=norm,
        )
        self.upsamplings = nn.ModuleList()
        self.blocks = nn.ModuleList()
        new_channels = self.encoder.bottleneck.out_channels
        channels = self.encoder.out_channels + new_channels
        for layers, stride, skip in reversed(
            list(zip(down_layers, pool_strides, self.encoder.skip_channels, strict=True))
        ):
            self.upsamplings.append(transition_up(spatial_dims, new_channels, stride))
            channels = new_channels + skip
            block = DenseBlock(
                spatial_dims,
                channels,
                layers=layers,
                growth_rate=growth_rate,
                dropout=dropout,
                norm=norm,
            )
            self.blocks.append(block)
            new_channels = block.out_channels
            channels += new_channels
        self.classifier = Conv[Conv.CONV, spatial_dims](channels, num_classes, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        skips, x, new = self.encoder(image)
        for upsampling, block, skip in zip(
            self.upsamplings, self.blocks, reversed(skips), strict=True
        ):
            x = torch.cat([upsampling(new), skip], dim=1)
            new = block(x)
        return self.classifier(torch.cat([x, new], dim=1))


def _check(
    pool_strides: Sequence[Sequence[int]],
    spatial_dims: int,
    counts: Sequence[int],
    dropout: float,
) -> None:
    bad = [list(s) for s in pool_strides if len(s) != spatial_dims or min(s) < 1]
    if bad:
        raise ArchitectureError(
            f"fcdensenet pool_strides must have {spatial_dims} positive entries each; got {bad}"
        )
    if min(counts) < 1:
        raise ArchitectureError(f"fcdensenet layers and growth_rate must be >= 1; got {counts}")
    if not 0 <= dropout < 1:
        raise ArchitectureError(f"fcdensenet dropout must be in [0, 1); got {dropout}")


def build_tiramisu(
    *,
    preset: str,
    in_channels: int,
    num_classes: int,
    pool_strides: list[list[int]],
    spatial_dims: int,
    growth_rate: int | None = None,
    base_filters: int = 48,
    dropout: float = 0.2,
    norm: NormKind = "batch",
) -> Tiramisu:
    """The FC-DenseNet ``preset`` on the plan's levels.

    ``growth_rate`` overrides the preset's k; the other options are :class:`Tiramisu`'s.
    """
    config = TIRAMISU_PRESETS[preset]
    return Tiramisu(
        in_channels=in_channels,
        num_classes=num_classes,
        pool_strides=pool_strides,
        spatial_dims=spatial_dims,
        down_layers=layers_for_levels(config.down_layers, len(pool_strides)),
        bottleneck_layers=config.bottleneck_layers,
        growth_rate=config.growth_rate if growth_rate is None else growth_rate,
        base_filters=base_filters,
        dropout=dropout,
        norm=norm,
    )
