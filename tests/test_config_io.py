"""The one formatter of pydantic errors, and options models that name the option meant."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from medseg.config_io import OptionsModel, validation_problems


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mirror_axes: tuple[int, ...] = ()


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    learning_rate: float = 0.01
    augmentation: Inner = Inner()
    optional: Inner | None = None
    stages: list[Inner] = []
    by_name: dict[str, Inner] = {}
    name: str = "x"

    @field_validator("name")
    @classmethod
    def _lower_case(cls, name: str) -> str:
        if name != name.lower():
            raise ValueError(f"must be lower case, got {name!r}")
        return name


EXTRA = "Extra inputs are not permitted"
AXES = f"mirror_axis: {EXTRA}; did you mean 'mirror_axes'?"
NOT_A_NUMBER = "Input should be a valid number, unable to parse string as a number"


@pytest.mark.parametrize(
    ("payload", "described"),
    [
        ({"learning_rat": 1}, f"learning_rat: {EXTRA}; did you mean 'learning_rate'?"),
        ({"augmentation": {"mirror_axis": [0]}}, f"augmentation.{AXES}"),
        ({"optional": {"mirror_axis": [0]}}, f"optional.{AXES}"),
        ({"stages": [{}, {"mirror_axis": [0]}]}, f"stages.1.{AXES}"),
        ({"by_name": {"a": {"mirror_axis": [0]}}}, f"by_name.a.{AXES}"),
        ({"zzz": 1}, f"zzz: {EXTRA}"),
        ({"name": "X"}, "name: must be lower case, got 'X'"),
        ({"learning_rate": "fast", "zzz": 1}, f"learning_rate: {NOT_A_NUMBER}; zzz: {EXTRA}"),
    ],
)
def test_each_problem_is_its_location_and_message(payload: dict, described: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Outer.model_validate(payload)
    assert validation_problems(raised.value, Outer) == described


def test_without_the_model_there_is_no_hint() -> None:
    with pytest.raises(ValidationError) as raised:
        Outer.model_validate({"learning_rat": 1})
    assert validation_problems(raised.value) == "learning_rat: Extra inputs are not permitted"


class FocalOptions(OptionsModel):
    option_kind = "focal option"

    gamma: float = 2.0


@pytest.mark.parametrize(
    ("payload", "described"),
    [
        ({"gama": 3}, "unknown focal option 'gama'; valid options: gamma; did you mean 'gamma'?"),
        ({"alpha": 3}, "unknown focal option 'alpha'; valid options: gamma"),
        ({"gamma": "x"}, f"gamma: {NOT_A_NUMBER}"),
    ],
)
def test_options_models_name_the_valid_options(payload: dict, described: str) -> None:
    with pytest.raises(ValidationError) as raised:
        FocalOptions.model_validate(payload)
    assert validation_problems(raised.value, FocalOptions) == described
