"""Reading YAML and JSON configuration files into typed models; unknown keys are errors."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from medseg.errors import ConfigError
from medseg.lookup import closest, unknown_choice

Model = TypeVar("Model", bound=BaseModel)


class OptionsModel(BaseModel):
    """Options of one named thing (a loss, an architecture): an unknown option is refused
    with the valid ones and the likely intended one, e.g. ``unknown option 'gama'; valid
    options: weight, gamma, class_weights; did you mean 'gamma'?``.

    Attributes:
        option_kind: how the message calls an option (``"unet option"``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    option_kind: ClassVar[str] = "option"

    @model_validator(mode="before")
    @classmethod
    def _known_options(cls, data: object) -> object:
        if isinstance(data, Mapping):
            for option in data:
                if option not in cls.model_fields:
                    known = cls.model_fields
                    raise ValueError(
                        unknown_choice(
                            option, known, what=cls.option_kind, known_as="valid options"
                        )
                    )
        return data


def load_yaml_model(path: Path | None, model: type[Model], **overrides: Any) -> Model:
    """Validate YAML ``path`` (``None``: defaults) plus non-None ``overrides`` as ``model``.

    Raises:
        ConfigError: naming the file and every offending key.
    """
    payload: dict[str, Any] = {}
    if path is not None:
        try:
            payload = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read YAML: {exc}") from exc
        if not isinstance(payload, dict):
            raise ConfigError(f"{path}: expected a mapping of option names to values")
    payload.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise ConfigError(f"{path or model.__name__}: {validation_problems(exc, model)}") from exc


def load_json_model(path: Path, model: type[Model]) -> Model:
    """Validate the JSON file ``path`` (a plan, a model's settings) as ``model``.

    Raises:
        ConfigError: naming the file, and the offending keys or why it cannot be read.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file: {exc}") from exc
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {validation_problems(exc, model)}") from exc


def validation_problems(error: ValidationError, model: type[BaseModel] | None = None) -> str:
    """``"key.sub: message; ..."`` for every problem pydantic found.

    Messages of validators (``raise ValueError(...)``) lose pydantic's "Value error, " prefix.
    Given the ``model`` that was validated, an unknown key close to a known one at its level
    gets a hint: ``learning_rat: Extra inputs are not permitted; did you mean 'learning_rate'?``.
    """
    described = []
    for problem in error.errors():
        location = problem["loc"]
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden" and model is not None and location:
            match = closest(location[-1], _keys_at(model, location[:-1]))
            message += f"; did you mean {match!r}?" if match else ""
        described.append(": ".join(filter(None, [".".join(map(str, location)), message])))
    return "; ".join(described)


def _keys_at(model: type[BaseModel], location: tuple[int | str, ...]) -> list[str]:
    """The field names of the model found at ``location`` inside ``model`` (or none)."""
    annotation: Any = model
    for part in location:
        inner = _model_in(annotation)
        if inner is not None and isinstance(part, str) and part in inner.model_fields:
            annotation = inner.model_fields[part].annotation
        elif get_origin(annotation) in (list, tuple) and isinstance(part, int):
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        else:
            return []
    inner = _model_in(annotation)
    return list(inner.model_fields) if inner is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """``annotation`` if it is a model, else the one model of an optional (``Model | None``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    models = [m for m in map(_model_in, get_args(annotation)) if m is not None]
    return models[0] if len(models) == 1 else None
