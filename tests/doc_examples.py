"""The worked examples of ``docs/extending.md``, loaded as modules for the tests that keep them
true (``tests/test_extending.py``, ``tests/io/test_formats_in_stages.py``).

A block is a fenced code block right after a marker line: ``<!-- example: NAME -->`` before a
``python`` block (code the guide tells the reader to write), ``<!-- entry: PATH -->`` before a
``diff`` block (the table entry added to the file ``PATH``).
"""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTENDING = ROOT / "docs" / "extending.md"

_MARKED = re.compile(r"<!-- (example|entry): (\S+) -->\n```(\w*)\n(.*?)\n```", re.DOTALL)
_FENCE = re.compile(r"^```(\w*)\n(.*?)\n```", re.DOTALL | re.MULTILINE)


@dataclass(frozen=True)
class Block:
    """One marked code block of the guide."""

    kind: str  # "example" or "entry"
    name: str  # the example's name, or the path of the entry's file
    language: str
    code: str


def marked_blocks(path: Path = EXTENDING) -> list[Block]:
    """Every marked block of ``path``, in order."""
    return [Block(*match.groups()) for match in _MARKED.finditer(path.read_text())]


def fenced_languages(path: Path = EXTENDING) -> list[str]:
    """The language of every fenced block of ``path``, marked or not, in order."""
    return [match.group(1) for match in _FENCE.finditer(path.read_text())]


def example_code(name: str) -> str:
    """The code of the example ``name``.

    Raises:
        KeyError: the guide has no (or more than one) example of that name.
    """
    found = [b.code for b in marked_blocks() if b.kind == "example" and b.name == name]
    if len(found) != 1:
        raise KeyError(f"{EXTENDING}: {len(found)} examples named {name!r}")
    return found[0]


@contextmanager
def example_module(name: str) -> Iterator[types.ModuleType]:
    """The example ``name`` run as a fresh module (in ``sys.modules`` while in use, so pydantic
    and typer resolve its annotations), forgotten on exit."""
    module_name = f"docs_extending_{name.replace('-', '_')}"
    module = types.ModuleType(module_name)
    module.__file__ = f"{EXTENDING}#{name}"
    sys.modules[module_name] = module
    try:
        exec(compile(example_code(name), module.__file__, "exec"), module.__dict__)
        yield module
    finally:
        sys.modules.pop(module_name, None)


def run_example(name: str) -> dict[str, object]:
    """Run the example ``name`` in a fresh namespace; return the names it defined."""
    namespace: dict[str, object] = {"__name__": f"docs_extending_{name.replace('-', '_')}"}
    exec(compile(example_code(name), f"{EXTENDING}#{name}", "exec"), namespace)
    return namespace
