"""One way to look up a named choice (an architecture, a loss, a backend, a stage kind).

A miss raises :class:`~medseg.errors.UnknownChoiceError` whose message names what was asked
for, every known choice and, when one is close, the likely intended one (like MONAI's
``look_up_option``)::

    unknown architecture 'unett'; known: deeplabv3, fcn16s, ..., unet_resize; did you mean 'unet'?

Example:
    >>> from medseg.infer.choices import Backend
    >>> look_up_option("onnxruntime", Backend)
    <Backend.ONNXRUNTIME: 'onnxruntime'>
    >>> unknown_choice("unte", ["unet", "pspnet"], what="architecture")
    "unknown architecture 'unte'; known: unet, pspnet; did you mean 'unet'?"
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import TypeVar, overload

from medseg.errors import UnknownChoiceError

Member = TypeVar("Member", bound=Enum)
Value = TypeVar("Value")

# difflib's default similarity cutoff: 'unett' -> 'unet', 'gama' -> 'gamma', not 'ce' -> 'focal'
_SIMILARITY = 0.6


@overload
def look_up_option(
    name: object, choices: type[Member], *, what: str | None = None, known_as: str = "known"
) -> Member: ...


@overload
def look_up_option(
    name: object, choices: Mapping[str, Value], *, what: str, known_as: str = "known"
) -> Value: ...


def look_up_option(
    name: object,
    choices: type[Enum] | Mapping[str, object],
    *,
    what: str | None = None,
    known_as: str = "known",
) -> object:
    """The member of an enum (by value, or the member itself) or the value of a mapping (by key).

    Args:
        name: what the user wrote.
        choices: an ``Enum`` class (members in definition order) or a mapping (in its order).
        what: the kind of thing, for the message (default: the enum's name in lower case).
        known_as: the words before the list of choices in the message.

    Raises:
        UnknownChoiceError: ``name`` is not a choice (the message lists the known ones).
    """
    if isinstance(choices, Mapping):
        if isinstance(name, str) and name in choices:
            return choices[name]
        known = list(choices)
    else:
        try:
            return choices(name)
        except ValueError:
            known = [str(member.value) for member in choices]
        what = what or choices.__name__.lower()
    raise UnknownChoiceError(unknown_choice(name, known, what=what or "option", known_as=known_as))


def unknown_choice(
    name: object, known: Iterable[str], *, what: str, known_as: str = "known"
) -> str:
    """``"unknown <what> '<name>'; <known_as>: a, b, c"``, and "did you mean" if one is close."""
    known = list(known)
    message = f"unknown {what} {name!r}; {known_as}: {', '.join(known)}"
    if match := closest(name, known):
        message += f"; did you mean {match!r}?"
    return message


def closest(name: object, known: Iterable[str]) -> str | None:
    """The known choice most similar to ``name`` (ignoring case), if any is similar enough."""
    by_folded = {choice.casefold(): choice for choice in known}
    matches = difflib.get_close_matches(
        str(name).casefold(), list(by_folded), n=1, cutoff=_SIMILARITY
    )
    return by_folded[matches[0]] if matches else None
