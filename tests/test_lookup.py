"""Looking up named choices: the member or value, or one message with every choice and a hint."""

from __future__ import annotations

from enum import StrEnum

import pytest

from medseg.errors import MedsegError, UnknownChoiceError
from medseg.lookup import closest, look_up_option, unknown_choice


class Colour(StrEnum):
    RED = "red"
    GREEN = "green"


ARCHITECTURES = {"unet": 1, "unet_resize": 2, "pspnet": 3}


@pytest.mark.parametrize(
    ("name", "choices", "expected"),
    [
        ("green", Colour, Colour.GREEN),
        (Colour.RED, Colour, Colour.RED),
        ("pspnet", ARCHITECTURES, 3),
    ],
)
def test_a_known_name_gives_its_member_or_value(name: object, choices: object, expected: object):
    assert look_up_option(name, choices, what="thing") == expected


@pytest.mark.parametrize(
    ("name", "choices", "what", "message"),
    [
        ("blue", Colour, None, "unknown colour 'blue'; known: red, green"),
        ("gren", Colour, None, "unknown colour 'gren'; known: red, green; did you mean 'green'?"),
        ("RED", Colour, "colour", "unknown colour 'RED'; known: red, green; did you mean 'red'?"),
        (
            "unett",
            ARCHITECTURES,
            "architecture",
            "unknown architecture 'unett'; known: unet, unet_resize, pspnet; did you mean 'unet'?",
        ),
        ("vgg", ARCHITECTURES, "architecture", "unknown architecture 'vgg'; known: unet, "),
        (3, ARCHITECTURES, "architecture", "unknown architecture 3; known: unet, unet_resize"),
    ],
)
def test_an_unknown_name_is_refused_with_the_choices_and_a_hint(
    name: object, choices: object, what: str | None, message: str
) -> None:
    with pytest.raises(UnknownChoiceError) as raised:
        look_up_option(name, choices, what=what)
    assert str(raised.value).startswith(message)
    if "did you mean" not in message:
        assert "did you mean" not in str(raised.value)


def test_the_error_is_a_user_error_and_a_value_error() -> None:
    """MedsegError: the command line reports it in one line; ValueError: pydantic does too."""
    assert issubclass(UnknownChoiceError, MedsegError)
    assert issubclass(UnknownChoiceError, ValueError)


def test_the_words_before_the_list_can_be_chosen() -> None:
    message = unknown_choice("dice", ["ce", "dice_ce"], what="loss", known_as="valid losses")
    assert message == "unknown loss 'dice'; valid losses: ce, dice_ce; did you mean 'dice_ce'?"


@pytest.mark.parametrize(
    ("name", "expected"), [("gama", "gamma"), ("Gamma", "gamma"), ("ce", None), ("", None)]
)
def test_closest_suggests_only_similar_names(name: str, expected: str | None) -> None:
    assert closest(name, ["gamma", "class_weights", "weight"]) == expected
