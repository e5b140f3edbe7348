"""U-Net whose decoder upsamples by resize-convolution instead of transposed convolution.

Odena, Dumoulin & Olah (2016, "Deconvolution and Checkerboard Artifacts") show that transposed
convolutions with a kernel not divisible by the stride, and in practice also learned ones,
leave checkerboard patterns; interpolating first (nearest neighbour, their recommendation, or
bi/trilinear) and then convolving (3x3(x3)) avoids them. Everything else is the project's U-Net
(``medseg.models.unet``: encoder, skip connections, deep supervision, state_dict keys); only
each decoder block's upsampling layer is replaced, and it keeps DynUNet's attribute name
(``network.upsamples.<i>.transp_conv.*``) because DynUNet's blocks call it by that name. The
encoder keys equal the U-Net's, so its encoder weights transfer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

from monai.networks.layers.factories import Conv
from monai.networks.nets import DynUNet
from torch import nn

from medseg.errors import ArchitectureError
from medseg.models.encoders import LINEAR_MODE
from medseg.models.unet import UNet, build_unet


class ResizeConv(nn.Sequential):
    """Upsampling by ``scale`` (interpolation) followed by a 3x3(x3) convolution without bias."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        scale: Sequence[int],
        mode: Literal["nearest", "linear"],
    ) -> None:
        interpolation = "nearest" if mode == "nearest" else LINEAR_MODE[spatial_dims]
        super().__init__(
            OrderedDict(
                resize=nn.Upsample(
                    scale_factor=tuple(float(step) for step in scale), mode=interpolation
                ),
                conv=Conv[Conv.CONV, spatial_dims](
                    in_channels, out_channels, 3, padding=1, bias=False
                ),
            )
        )


def build_resize_unet(
    *,
    in_channels: int,
    num_classes: int,
    pool_strides: list[list[int]],
    spatial_dims: int,
    deep_supervision: bool = True,
    base_filters: int = 32,
    max_filters: int | None = None,
    upsample_mode: Literal["nearest", "linear"] = "nearest",
) -> UNet:
    """The U-Net of ``build_unet`` with resize-convolution upsampling (``upsample_mode``).

    Raises:
        ArchitectureError: ``upsample_mode`` other than ``"nearest"`` or ``"linear"``.
    """
    if upsample_mode not in ("nearest", "linear"):
        raise ArchitectureError(
            f"upsample_mode must be 'nearest' or 'linear'; got {upsample_mode!r}"
        )
    unet = build_unet(
        in_channels=in_channels,
        num_classes=num_classes,
        pool_strides=pool_strides,
        spatial_dims=spatial_dims,
        deep_supervision=deep_supervision,
        base_filters=base_filters,
        max_filters=max_filters,
    )
    # DynUNet orders its decoder blocks deepest first
    for block, stride in zip(unet.network.upsamples, reversed(pool_strides), strict=True):
        transposed = block.transp_conv.conv
        block.transp_conv = ResizeConv(
            spatial_dims,
            transposed.in_channels,
            transposed.out_channels,
            scale=stride,
            mode=upsample_mode,
        )
        block.transp_conv.apply(DynUNet.initialize_weights)
    return unet
