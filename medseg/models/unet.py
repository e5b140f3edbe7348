"""2D and 3D U-Net (nnU-Net style) on MONAI's DynUNet building blocks.

Depth and strides come from the plan (one stride-2 level per entry of ``pool_strides``), so a
patch of any shape the planner chose fits exactly. Two 3x3(x3) convolutions per level with
instance normalization and leaky ReLU; filters double per level from ``base_filters`` up to
``max_filters`` (320 in 3D, 512 in 2D, as nnU-Net). With deep supervision (default) the network
returns, in training mode, a list of logits: full resolution first, then the auxiliary heads
(upsampled to full resolution by DynUNet); in eval mode only the full-resolution logits.
"""

from __future__ import annotations

import torch
from monai.networks.nets import DynUNet
from torch import nn

from medseg.models.encoders import level_filters


class UNet(nn.Module):
    """DynUNet with list-valued deep-supervision output.

    ``encoder_prefixes`` name DynUNet's encoder (input block, strided downsampling blocks,
    bottleneck). Its state_dict also lists the same tensors under ``network.skip_layers.*``
    (DynUNet's recursive view of the same modules), so loading the encoder's entries with
    ``strict=False`` reports those aliases as missing although they are loaded.
    """

    encoder_prefixes: tuple[str, ...] = (
        "network.input_block.",
        "network.downsamples.",
        "network.bottleneck.",
    )

    def __init__(self, network: DynUNet) -> None:
        super().__init__()
        self.network = network

    @property
    def deep_supervision(self) -> bool:
        """Whether training-mode output is a list of logits (DynUNet's setting)."""
        return bool(self.network.deep_supervision)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        output = self.network(x)
        if self.training and self.deep_supervision:
            return list(torch.unbind(output, dim=1))
        return output


def deep_supervision_heads(levels: int, deep_supervision: bool) -> int:
    """Auxiliary outputs of a U-Net with ``levels`` levels: ``levels - 3`` (at least 1), none
    when ``deep_supervision`` is off or there are at most two levels."""
    return max(1, levels - 3) if deep_supervision and levels > 2 else 0


def build_unet(
    *,
    in_channels: int,
    num_classes: int,
    pool_strides: list[list[int]],
    spatial_dims: int,
    deep_supervision: bool = True,
    base_filters: int = 32,
    max_filters: int | None = None,
) -> UNet:
    """A U-Net whose levels follow ``pool_strides`` (from the plan configuration)."""
    levels = len(pool_strides) + 1
    filters = level_filters(
        levels, spatial_dims=spatial_dims, base_filters=base_filters, max_filters=max_filters
    )
    strides = [[1] * spatial_dims, *pool_strides]
    network = DynUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=num_classes,
        kernel_size=[[3] * spatial_dims] * levels,
        strides=strides,
        upsample_kernel_size=pool_strides,
        filters=filters,
        norm_name=("INSTANCE", {"affine": True}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        deep_supervision=deep_supervision_heads(levels, deep_supervision) > 0,
        deep_supr_num=max(1, levels - 3),
        res_block=False,
    )
    return UNet(network)
