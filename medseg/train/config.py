"""Training configuration (``configs/train/*.yaml``); unknown keys are errors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FieldSerializationInfo,
    ValidationInfo,
    field_serializer,
    field_validator,
)

from medseg.config_io import load_yaml_model
from medseg.errors import ConfigError, MedsegError
from medseg.lookup import look_up_option
from medseg.losses import LossSpec
from medseg.models import ARCHITECTURES, network_options
from medseg.models.pretrained import PretrainedEncoder
from medseg.train.augment import AugmentationConfig

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
    """Everything ``medseg train`` needs beyond the manifest and the plan.

    Every part is checked when the config is read: the architecture against the registry
    (``medseg.models.ARCHITECTURES``) and ``network`` against that architecture's options,
    the loss against ``medseg.losses.LOSSES``, the augmentation against
    :class:`~medseg.train.augment.AugmentationConfig`. Saved (MLflow params, the
    ``train_config.json`` artifact) in the form it was written: the network and augmentation
    options that were given, the loss in its short form.
    """

    model_config = ConfigDict(extra="forbid")

    # a plan configuration; 3d_lowres trains from its own cache at its spacing
    configuration: Literal["3d", "2d", "3d_lowres"] = "3d"
    architecture: str = "unet"
    # options of the architecture's builder (medseg/models), as given and converted to the
    # builder's types; each builder has its own defaults
    network: dict[str, Any] = Field(default_factory=dict)
    # encoder weights from a local file or an MLflow model (medseg/models/pretrained.py)
    pretrained_encoder: PretrainedEncoder | None = None
    loss: LossSpec = Field(default_factory=lambda: LossSpec.model_validate("dice_ce"))
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
    # quantize the packaged model to int8 with OpenVINO's NNCF, calibrated on training patches
    # (opt-in: `predict --precision int8` then runs it if it agrees with fp32 on >= 99.9%)
    int8: bool = False
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig)
    validation: ValidationOptions = ValidationOptions()
    experiment: str = "medseg"
    registered_model_name: str | None = None

    @field_validator("architecture")
    @classmethod
    def _registered_architecture(cls, architecture: str) -> str:
        look_up_option(architecture, ARCHITECTURES, what="architecture")
        return architecture

    @field_validator("int8")
    @classmethod
    def _quantization_installed(cls, int8: bool) -> bool:
        """int8 is refused before training, not after, when NNCF or OpenVINO is missing."""
        if int8:
            from medseg.infer.quantize import require_quantization

            require_quantization()
        return int8

    @field_validator("network")
    @classmethod
    def _architecture_takes_the_options(
        cls, options: dict[str, Any], info: ValidationInfo
    ) -> dict[str, Any]:
        if "architecture" not in info.data:  # unknown architecture, reported on its own
            return options
        return network_options(info.data["architecture"], options)

    @field_serializer("augmentation")
    def _augmentation_as_given(
        self, augmentation: AugmentationConfig, info: FieldSerializationInfo
    ) -> dict[str, Any]:
        return augmentation.model_dump(mode=info.mode, exclude_unset=True)


def load_train_config(path: Path | None, **overrides: Any) -> TrainConfig:
    """Read a training config from YAML (``None``: defaults), then apply non-None ``overrides``.

    Raises:
        ConfigError: unreadable file, unknown keys or invalid values (names the file and keys).
    """
    return load_yaml_model(path, TrainConfig, **overrides)


def check_against_plan(config: TrainConfig, plan: Plan, *, source: Path | None = None) -> None:
    """Refuse a config that cannot train with ``plan``, before anything is preprocessed.

    Checks what only the plan can tell: the planned configuration, and that the network
    builds with the plan's strides and patch (it is built once, on the CPU).

    Raises:
        ConfigError: naming ``source`` (the config file) and the offending key.
    """
    from medseg.models import build_network, network_arguments

    where = source or "training options"
    planned = plan.configurations.get(config.configuration)
    if planned is None:
        raise ConfigError(
            f"{where}: configuration: {config.configuration!r} is not in the plan, which has "
            f"{sorted(plan.configurations)}"
        )
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
