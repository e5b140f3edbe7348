"""Checks of command-line values: option callbacks and parsers.

Most checks run while the arguments are parsed, before a command does any work: a bad value
is a usage error, printed by ``medseg.cli.errors`` as one line naming the command and the
option (``error: medseg predict --overlap: 1.5 is not in [0, 1)``). Output folders are
checked without creating anything.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer

from medseg.errors import InputFileError
from medseg.infer.choices import Backend, Precision, runs_on

Number = TypeVar("Number", int, float)

_INTERVAL = re.compile(r"^([\[(])\s*(-?inf|[-+.\d]+)\s*,\s*(-?inf|[-+.\d]+)\s*([\])])$")


def interval(notation: str) -> Callable[[Number | None], Number | None]:
    """An option callback that refuses numbers outside ``notation`` (e.g. ``"[0, 1)"``).

    NaN is always refused; an infinite bound is open.

    Example:
        >>> overlap = typer.Option(0.5, callback=interval("[0, 1)"))
    """
    match = _INTERVAL.match(notation)
    if match is None:
        raise ValueError(f"not an interval: {notation!r}")
    low_bracket, low_text, high_text, high_bracket = match.groups()
    low, high = float(low_text), float(high_text)

    def check(value: Number | None) -> Number | None:
        if value is None:
            return value
        above_low = value >= low if low_bracket == "[" and math.isfinite(low) else value > low
        below_high = value <= high if high_bracket == "]" and math.isfinite(high) else value < high
        if not (above_low and below_high):  # also refuses NaN: every comparison is False
            raise typer.BadParameter(f"{value:g} is not in {notation}")
        return value

    return check


def output_folder(value: Path | None) -> Path | None:
    """Option callback: ``value`` is a folder medseg can write into, or can create."""
    if value is not None and (problem := output_problem(value, folder=True)):
        raise typer.BadParameter(f"{value}: {problem}")
    return value


def output_file(value: Path | None) -> Path | None:
    """Option callback: ``value`` is a file medseg can write (its folder may not exist yet)."""
    if value is not None and (problem := output_problem(value, folder=False)):
        raise typer.BadParameter(f"{value}: {problem}")
    return value


def output_problem(path: Path, *, folder: bool) -> str | None:
    """Why ``path`` cannot be written (as a folder, or as a file), or None when it can.

    Nothing is created: an absent path is checked through its nearest existing parent.
    """
    path = Path(path)
    try:
        if path.exists():
            if folder and not path.is_dir():
                return "is a file, not a folder"
            if not folder and path.is_dir():
                return "is a folder, not a file"
            target = path if folder else path.parent
            return None if _writable(target) else f"{target} is not writable"
        for parent in path.absolute().parents:
            if parent.exists():
                if not parent.is_dir():
                    return f"cannot be created: {parent} is a file, not a folder"
                return None if _writable(parent) else f"cannot be created in {parent}: not writable"
    except OSError as error:  # e.g. a parent that cannot be searched
        return f"cannot be checked: {error.strerror or error}"
    return None


def _writable(folder: Path) -> bool:
    # os.access also reports a read-only file system to root, whom permissions do not stop.
    return os.access(folder, os.W_OK | os.X_OK)


def batch_output_folder(value: Path) -> Path:
    """Option callback: a writable folder holding a batch's per-scan records."""
    from medseg.batch.layout import read_failures, read_results

    output_folder(value)
    if not (read_results(value) or read_failures(value)):
        raise typer.BadParameter(
            f"{value}: no per-scan records (<case>/result.json, .failures/): not the OUT folder "
            "of a batch, or no scan of it has finished"
        )
    return value


def refuse_no_scans(path: Path, *, ignored: int | None = None) -> None:
    """An input that holds no scan is a user error (most likely the wrong folder).

    Raises:
        InputFileError: always, naming ``path`` (and how many other files it holds).
    """
    others = f" ({ignored} other files)" if ignored is not None else ""
    raise InputFileError(path, f"no DICOM series or NIfTI, NRRD or MetaImage files found{others}")


def parse_label_names(text: str) -> dict[int, str]:
    """Option parser: ``{1: "anterior", 2: "posterior"}`` from ``"1=anterior,2=posterior"``.

    Raises:
        ValueError: not VALUE=NAME pairs with whole values >= 1 and names.
    """
    try:
        pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
        names = {int(value): name.strip() for value, name in pairs}
    except ValueError:
        names = {}
    if not names or any(value <= 0 or not name for value, name in names.items()):
        raise ValueError(f"expected VALUE=NAME pairs with values >= 1, got {text!r}")
    return names


def check_precision(precision: Precision, backend: Backend) -> None:
    """Refuse a precision the backend does not offer (bf16 and int8 are OpenVINO's; auto may
    pick it)."""
    if not runs_on(precision, backend):
        raise typer.BadParameter(
            f"{precision.value} needs --backend openvino (not {backend.value})",
            param_hint="--precision",
        )


def structure_list(text: str | None) -> str | None:
    """Option callback: ``"all"`` or structure values such as ``"1,3"``."""
    if text is None or text == "all":
        return text
    try:
        values = [int(value) for value in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise typer.BadParameter(f'expected "all" or structure values such as "1,3", got {text!r}')
    return text


def volume_format(name: str) -> str:
    """``--output-format``: the name of a registered volume format (``medseg.io.formats``)."""
    from medseg.errors import UnknownFormatError
    from medseg.io.formats import format_named

    try:
        return format_named(name).name
    except UnknownFormatError as error:
        raise typer.BadParameter(str(error)) from error
