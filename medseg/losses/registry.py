"""The losses a config can name, and the loss spec that names them.

:data:`LOSSES` is the one table of configurable losses: each class carries its name in a spec
(``config_name``) and its options model (``Options``). A new loss is a module with its class
and options (see :mod:`medseg.losses.focal`) plus one entry here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer, model_validator
from pydantic_core import InitErrorDetails

from medseg.config_io import validation_problems
from medseg.errors import LossConfigError
from medseg.lookup import look_up_option
from medseg.losses.base import SegmentationLoss, TermSpec
from medseg.losses.border import BorderWeightedCELoss
from medseg.losses.compound import CombinedLoss
from medseg.losses.cross_entropy import CrossEntropyLoss
from medseg.losses.dice import DiceCELoss
from medseg.losses.dice_bce import DiceBCELoss
from medseg.losses.focal import FocalLoss

LOSSES: dict[str, type[SegmentationLoss]] = {
    loss.config_name: loss
    for loss in (CrossEntropyLoss, DiceCELoss, FocalLoss, BorderWeightedCELoss, DiceBCELoss)
}
"""Configurable losses by their name in a loss spec, in the order terms are summed."""


class LossSpec(BaseModel):
    """A loss as configured: loss names (keys of :data:`LOSSES`) with their term options.

    Written as a name (``"dice_ce"``), or a mapping of names to a weight or to options
    (``{"dice_ce": 1.0, "border_ce": 0.5}``, ``{"focal": {"weight": 1.0, "gamma": 3.0}}``).
    Each term's options are checked by its loss class, so a spec that validates builds.
    Serialized in the short form: a term given only a weight as that weight, otherwise the
    options that were given.

    Example:
        >>> LossSpec.model_validate({"focal": {"gamma": 3.0}, "dice_ce": 1.0}).names()
        ['dice_ce', 'focal']
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _terms(cls, data: object) -> object:
        if isinstance(data, LossSpec):
            return data
        if isinstance(data, str):
            data = {data: 1.0}
        if not isinstance(data, Mapping):
            raise ValueError(
                "expected a loss name, a mapping of loss names to weights or options, or a "
                f"LossSpec; got {type(data).__name__}"
            )
        if not data:
            raise ValueError(f"no loss terms; give at least one of {', '.join(LOSSES)}")
        terms: dict[str, TermSpec] = {}
        problems: list[InitErrorDetails] = []
        for name, options in data.items():
            loss = look_up_option(name, LOSSES, what="loss", known_as="valid losses")
            try:
                term = loss.Options.model_validate(options)
                loss(**term.loss_options())  # the loss's own checks (smooth > 0, ...)
            except ValidationError as error:
                problems += [_under(name, problem) for problem in error.errors()]
            except LossConfigError as error:
                problem = {"type": "value_error", "input": options, "ctx": {"error": error}}
                problems.append(_under(name, problem))
            else:
                terms[name] = term
        if problems:
            raise ValidationError.from_exception_data(cls.__name__, problems)
        return {name: terms[name] for name in LOSSES if name in terms}

    @model_serializer
    def _short_form(self) -> dict[str, Any]:
        short: dict[str, Any] = {}
        for name, term in self.terms().items():
            given = term.model_dump(exclude_unset=True)
            short[name] = term.weight if set(given) <= {"weight"} else given
        return short

    def terms(self) -> dict[str, TermSpec]:
        """The configured terms by loss name, in the order of :data:`LOSSES`."""
        return dict(self.__pydantic_extra__ or {})

    def names(self) -> list[str]:
        """Names of the configured terms, in the order of :data:`LOSSES`."""
        return list(self.terms())


def parse_loss_spec(spec: LossSpec | Mapping[str, object] | str) -> LossSpec:
    """Validate a loss spec: a name, a mapping of names to weights or options, or a LossSpec.

    Raises:
        LossConfigError: on unknown loss names or options (the message lists the valid ones),
            invalid values, or no terms.
    """
    if isinstance(spec, LossSpec):
        return spec
    if isinstance(spec, str):
        spec = {spec: 1.0}
    if not isinstance(spec, Mapping):
        raise LossConfigError(
            "loss spec: expected a loss name, a mapping of loss names to weights or options, "
            f"or a LossSpec; got {type(spec).__name__}"
        )
    try:
        return LossSpec.model_validate(dict(spec))
    except ValidationError as error:
        raise LossConfigError(f"loss spec {dict(spec)!r}: {validation_problems(error)}") from error


def build_loss(spec: LossSpec | Mapping[str, object] | str) -> SegmentationLoss:
    """Build the loss of a spec: the bare loss for one term of weight 1, else a CombinedLoss.

    Example:
        >>> build_loss({"dice_ce": 1.0, "border_ce": 0.5}).needs_weights
        True

    Raises:
        LossConfigError: see :func:`parse_loss_spec`.
    """
    terms = [
        (term.weight, LOSSES[name](**term.loss_options()))
        for name, term in parse_loss_spec(spec).terms().items()
    ]
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][1]
    return CombinedLoss(terms)


def _under(name: str, problem: Any) -> InitErrorDetails:
    """A problem of one term's options, located under the term's name."""
    return InitErrorDetails(
        type=problem["type"],
        loc=(name, *problem.get("loc", ())),
        input=problem["input"],
        ctx=problem.get("ctx", {}),
    )
