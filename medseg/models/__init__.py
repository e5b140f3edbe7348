"""Network architectures by name, built from a plan configuration.

``build_network`` is the one entry point: training builds networks through it and a packaged
model records its name and arguments, so inference rebuilds exactly the trained network.

Every builder takes ``in_channels``, ``num_classes``, ``pool_strides`` and ``spatial_dims`` plus
its own options, and returns logits of the input's spatial size. Every network has
``deep_supervision`` (whether training-mode output is a list of logits, full resolution first)
and ``encoder_prefixes`` (state_dict key prefixes of its encoder's parameters). Encoder keys and
shapes agree, for equal options, between ``fcn32s``/``fcn16s``/``fcn8s``/``pspnet``/``deeplabv3``
(``medseg.models.encoders``) and between ``unet``/``unet_resize``; ``resenc_unet`` has its own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from functools import cache, partial
from typing import Any

from pydantic import create_model
from torch import nn

from medseg.config_io import OptionsModel
from medseg.errors import ArchitectureError
from medseg.lookup import look_up_option
from medseg.models.deeplab import DeepLabV3
from medseg.models.fcn import FCN, FCN_SKIPS
from medseg.models.pspnet import PSPNet
from medseg.models.resenc_unet import ResEncUNet
from medseg.models.resize_unet import build_resize_unet
from medseg.models.tiramisu import TIRAMISU_PRESETS, build_tiramisu
from medseg.models.unet import build_unet

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "unet": build_unet,
    "unet_resize": build_resize_unet,
    "resenc_unet": ResEncUNet,
    **{variant: partial(FCN, variant=variant) for variant in FCN_SKIPS},
    **{preset: partial(build_tiramisu, preset=preset) for preset in TIRAMISU_PRESETS},
    "pspnet": PSPNet,
    "deeplabv3": DeepLabV3,
}


def build_network(*, architecture: str = "unet", **arguments: Any) -> nn.Module:
    """Build the registered ``architecture`` with its keyword arguments.

    Raises:
        UnknownChoiceError: unknown architecture (the message lists the known ones).
        ArchitectureError: options the architecture does not take (the message lists those
            it takes), or invalid values of its options.
    """
    builder = look_up_option(architecture, ARCHITECTURES, what="architecture")
    options = _options(builder)
    unknown = sorted(set(arguments) - set(options))
    if unknown:
        raise ArchitectureError(
            f"architecture {architecture!r} takes no option(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(options)}"
        )
    return builder(**arguments)


PLAN_ARGUMENTS = ("in_channels", "num_classes", "pool_strides", "spatial_dims")
"""Arguments of every builder that :func:`network_arguments` takes from the plan and the data."""


def network_options(architecture: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` of ``architecture`` (a config's ``network:``), checked against its builder.

    Names and types are those of the builder's keyword arguments, less :data:`PLAN_ARGUMENTS`;
    values come back converted to those types (``16.0`` -> ``16``), in the order given.

    Raises:
        UnknownChoiceError: unknown architecture (the message lists the known ones).
        pydantic.ValidationError: an unknown option (the message lists the valid ones) or a
            value of the wrong type.
    """
    validated = _options_model(architecture).model_validate(dict(options))
    return {name: getattr(validated, name) for name in options}


@cache
def _options_model(architecture: str) -> type[OptionsModel]:
    """A model of the options ``architecture``'s builder takes beyond the plan's arguments."""
    builder = look_up_option(architecture, ARCHITECTURES, what="architecture")
    parameters = inspect.signature(builder, eval_str=True).parameters
    fields: dict[str, Any] = {
        name: (parameters[name].annotation, parameters[name].default)
        for name in _options(builder)
        if name not in PLAN_ARGUMENTS
    }
    model = create_model(f"{architecture}_options", __base__=OptionsModel, **fields)
    model.option_kind = f"{architecture} option"
    return model


def network_arguments(
    *, architecture: str, in_channels: int, num_classes: int, configuration: dict, **options: Any
) -> dict[str, Any]:
    """JSON-ready arguments of ``build_network`` for a plan configuration."""
    return {
        "architecture": architecture,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "pool_strides": configuration["pool_strides"],
        "spatial_dims": len(configuration["patch_size"]),
        **options,
    }


def _options(builder: Callable[..., nn.Module]) -> list[str]:
    """Keyword arguments of ``builder``, without those its registry entry fixes."""
    fixed = builder.keywords if isinstance(builder, partial) else {}
    return [name for name in inspect.signature(builder).parameters if name not in fixed]
