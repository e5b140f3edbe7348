"""Pretrained encoder weights: from a local file or an MLflow model, never downloaded.

A source is one of

* a local ``.pt``/``.pth`` file: a medseg training checkpoint (``best.pt``, ``last.pt``), a
  plain ``state_dict``, or a dict holding one under ``"state_dict"`` (what
  ``save_encoder_weights`` writes);
* an MLflow model: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/ID/model`` or a
  downloaded model folder (a packaged medseg model: its own encoder prefixes are known).

Only the encoder is taken: the parameters (and normalisation buffers) whose names start with
one of the target network's ``encoder_prefixes`` and whose name and shape match in the source.
``rename`` maps source key prefixes first (``{"features.": "encoder."}``) for weights converted
from elsewhere. The rest of the network keeps its fresh initialisation.

Which architectures can share an encoder: those with the same encoder options (see
``medseg/models/encoders.py``); a U-Net's encoder goes to another U-Net (``unet`` and
``unet_resize`` name their encoders alike).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from medseg.errors import MedsegError, PretrainedEncoderError

logger = logging.getLogger(__name__)

MODEL_URI_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


class PretrainedEncoder(BaseModel):
    """``pretrained_encoder:`` in a training config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str  # a local file or folder, or an MLflow model URI
    rename: dict[str, str] = {}  # source key prefix -> target key prefix, applied first
    strict: bool = False  # every encoder tensor of the network must be loaded
    freeze: bool = False  # do not train the loaded encoder


@dataclass
class EncoderTransfer:
    """What was loaded into the network, and what was not (name -> reason)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for logs."""
        return (
            f"{len(self.loaded)} encoder tensors loaded from {self.source}, "
            f"{len(self.skipped)} kept their initialisation"
        )


def describe_source(source: str) -> str:
    """``source`` as it may be logged: a model URI as is; a local file or folder by its name
    and content hash (paths can name people; the hash identifies the weights)."""
    if source.startswith(MODEL_URI_SCHEMES):
        return source
    path = Path(source).expanduser()
    if path.is_file():
        from medseg.manifest import sha256_file

        return f"file {path.name} sha256:{sha256_file(path)[:16]}"
    return f"folder {path.name}"


def encoder_state(network: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's tensors (parameters and buffers) of a network with ``encoder_prefixes``."""
    prefixes = _prefixes(network)
    return {k: v for k, v in network.state_dict().items() if k.startswith(prefixes)}


def save_encoder_weights(network: nn.Module, path: Path) -> Path:
    """Write the encoder of ``network`` as a portable file (``{"state_dict": ...}``)."""
    from medseg.io.atomic import atomic_path

    payload = {
        "format": "medseg-encoder",
        "encoder_prefixes": list(_prefixes(network)),
        "state_dict": {k: v.detach().cpu() for k, v in encoder_state(network).items()},
    }
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_encoder_weights(
    network: nn.Module, settings: PretrainedEncoder, *, tracking_uri: str | None = None
) -> EncoderTransfer:
    """Copy matching encoder tensors from ``settings.source`` into ``network``; freeze them
    when asked.

    Raises:
        PretrainedEncoderError: the source cannot be read, nothing matches, or ``strict`` and
            some encoder tensor found no match (the message names a few and why).
    """
    source_state = _renamed(_read_source(settings.source, tracking_uri), settings.rename)
    target = encoder_state(network)
    transfer = EncoderTransfer(source=settings.source)
    chosen = {}
    for name, tensor in target.items():
        found = source_state.get(name)
        if found is None:
            transfer.skipped[name] = "not in the source"
        elif tuple(found.shape) != tuple(tensor.shape):
            transfer.skipped[name] = (
                f"shape {tuple(found.shape)} in the source, {tuple(tensor.shape)} here"
            )
        else:
            chosen[name] = found.to(dtype=tensor.dtype)
            transfer.loaded.append(name)
    if not transfer.loaded:
        raise PretrainedEncoderError(
            f"{settings.source}: no encoder tensor matches this network by name and shape "
            f"({_examples(transfer.skipped)}); same architecture family and encoder options? "
            "`rename` maps other key prefixes"
        )
    if settings.strict and transfer.skipped:
        raise PretrainedEncoderError(
            f"{settings.source}: strict, but {len(transfer.skipped)} encoder tensors have no "
            f"match ({_examples(transfer.skipped)})"
        )
    network.load_state_dict(chosen, strict=False)
    if settings.freeze:
        for name, parameter in network.named_parameters():
            if name in chosen:
                parameter.requires_grad_(False)
    logger.info("%s", transfer.summary())
    return transfer


def _prefixes(network: nn.Module) -> tuple[str, ...]:
    prefixes = tuple(getattr(network, "encoder_prefixes", ()))
    if not prefixes:
        raise PretrainedEncoderError(
            f"{type(network).__name__} does not declare its encoder (encoder_prefixes)"
        )
    return prefixes


def _read_source(source: str, tracking_uri: str | None) -> Mapping[str, torch.Tensor]:
    path = Path(source).expanduser()
    if source.startswith(MODEL_URI_SCHEMES) or path.is_dir():
        return _model_state(str(path) if path.is_dir() else source, tracking_uri)
    if not path.is_file():
        raise PretrainedEncoderError(f"{source}: no such file, folder or MLflow model URI")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise PretrainedEncoderError(f"{path}: not a torch weights file ({error})") from error
    state = payload
    if isinstance(payload, dict):
        state = payload.get("state_dict", payload.get("network", payload))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedEncoderError(
            f"{path}: holds no state_dict (expected a medseg checkpoint, a state_dict or "
            "{'state_dict': ...})"
        )
    return state


def _model_state(uri: str, tracking_uri: str | None) -> dict[str, torch.Tensor]:
    from medseg.tracking.packaging import load_segmentation_model

    try:
        network = load_segmentation_model(uri, tracking_uri=tracking_uri).network
    except MedsegError as error:
        raise PretrainedEncoderError(f"{uri}: {error}") from error
    except Exception as error:
        raise PretrainedEncoderError(f"{uri}: cannot load the MLflow model ({error})") from error
    return {k: v.detach().cpu() for k, v in encoder_state(network).items()}


def _renamed(
    state: Mapping[str, torch.Tensor], rename: Mapping[str, str]
) -> dict[str, torch.Tensor]:
    renamed = {}
    for name, tensor in state.items():
        for old, new in rename.items():
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        renamed[name] = tensor
    return renamed


def _examples(skipped: Mapping[str, str], count: int = 3) -> str:
    shown = [f"{name}: {reason}" for name, reason in list(skipped.items())[:count]]
    more = f" and {len(skipped) - count} more" if len(skipped) > count else ""
    return "; ".join(shown) + more
