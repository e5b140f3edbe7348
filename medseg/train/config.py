"""Training configuration (``configs/train/*.yaml``); unknown keys are errors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from medseg.config_io import ConfigError, load_yaml_model
from medseg.errors import MedsegError
from medseg.models.pretrained import PretrainedEncoder

if TYPE_CHECKING:
    from medseg.preprocess.plan import Plan


class ValidationOptions(BaseModel):
    """Sliding-window validation on the validation split."""

    model_config = ConfigDict(extra="forbid")

    every_epochs: int = Field(1, ge=1)
    overlap: float = Field(0.5, ge=0, lt=1)
    mirror: bool = False
    max_cases: int | None = Field(None, ge=1)
    overlay_pictures: int = Field(2, ge=0)


class TrainConfig(BaseModel):
    """Everything ``medseg train`` needs beyond the manifest and the plan."""

    model_config = ConfigDict(extra="forbid")

    configuration: Literal["3d", "2d"] = "3d"
    architecture: str = "unet"
    # options of the architecture's builder (medseg/models); each builder has its own defaults
    network: dict[str, Any] = Field(default_factory=dict)
    # encoder weights from a local file or an MLflow model (medseg/models/pretrained.py)
    pretrained_encoder: PretrainedEncoder | None = None
    loss: dict[str, Any] | str = "dice_ce"
    optimizer: Literal["sgd", "adamw"] = "sgd"
    learning_rate: float = Field(0.01, gt=0)
    weight_decay: float = Field(3e-5, ge=0)
    momentum: float = Field(0.99, ge=0, lt=1)
    epochs: int = Field(100, ge=1)
    steps_per_epoch: int = Field(250, ge=1)
    max_minutes: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, ge=1)
    checkpoint_every_steps: int = Field(50, ge=1)
    num_workers: int = Field(2, ge=0)
    threads: int | None = Field(None, ge=1)
    seed: int = 0
    deterministic: bool = False
    amp: bool = True
    cpu_bf16: bool = False
    augmentation: dict[str, Any] = Field(default_factory=dict)
    validation: ValidationOptions = ValidationOptions()
    experiment: str = "medseg"
    registered_model_name: str | None = None


def load_train_config(path: Path | None, **overrides: Any) -> TrainConfig:
    """Read a training config from YAML (``None``: defaults), then apply non-None ``overrides``.

    Raises:
        ConfigError: unreadable file, unknown keys or invalid values (names the file and keys).
    """
    return load_yaml_model(path, TrainConfig, **overrides)


def check_against_plan(config: TrainConfig, plan: Plan, *, source: Path | None = None) -> None:
    """Refuse a config that cannot train with ``plan``, before anything is preprocessed.

    Checks what only the plan can tell: the planned configuration, the loss, and that the
    architecture takes the network options (a network is built once, on the CPU).

    Raises:
        ConfigError: naming ``source`` (the config file) and the offending key.
    """
    from medseg.losses import build_loss
    from medseg.models import build_network, network_arguments

    where = source or "training options"
    planned = plan.configurations.get(config.configuration)
    if planned is None:
        raise ConfigError(
            f"{where}: configuration: {config.configuration!r} is not in the plan, which has "
            f"{sorted(plan.configurations)}"
        )
    try:
        build_loss(config.loss)
    except MedsegError as error:
        raise ConfigError(f"{where}: loss: {error}") from error
    try:
        build_network(
            **network_arguments(
                architecture=config.architecture,
                in_channels=1,  # the cache knows the channels; the options do not depend on it
                num_classes=max(plan.label_names) + 1,
                configuration=planned.model_dump(),
                **config.network,
            )
        )
    except (MedsegError, TypeError, ValueError) as error:  # unknown or ill-typed options
        raise ConfigError(f"{where}: architecture/network: {error}") from error
