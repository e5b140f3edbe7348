"""Network architectures by name, built from a plan configuration.

``build_network`` is the one entry point: training builds networks through it and a packaged
model records its name and arguments, so inference rebuilds exactly the trained network.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from medseg.errors import MedsegError
from medseg.models.unet import build_unet

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"unet": build_unet}


def build_network(*, architecture: str = "unet", **arguments: Any) -> nn.Module:
    """Build the registered ``architecture`` with its keyword arguments.

    Raises:
        MedsegError: unknown architecture (the message lists the known ones).
    """
    try:
        builder = ARCHITECTURES[architecture]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise MedsegError(f"unknown architecture {architecture!r}; known: {known}") from None
    return builder(**arguments)


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
