"""The README's layout table names every module and package of ``medseg/`` (and every guide of
``docs/``), and every path it names exists: a module added or moved without its row fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medseg"
_BACKTICKED = re.compile(r"`([^`]+)`")


def _layout_rows() -> list[tuple[list[str], list[str]]]:
    """``(path tokens, what tokens)`` of each row of the README's layout table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        path_cell, what_cell = line.strip("|").split(" | ", 1)
        rows.append((_BACKTICKED.findall(path_cell), _BACKTICKED.findall(what_cell)))
    return rows


def _medseg_names() -> list[tuple[bool, tuple[str, ...]]]:
    """Each name of a ``medseg/`` row: whether it names a module of the table (in the first
    column, or as a full ``medseg/`` path anywhere), and the paths under ``medseg/`` it may
    mean. A name without ``medseg/`` is relative to the row's first path (``medseg/volume.py``,
    ``manifest.py``; ``medseg/io/``, ``formats.py``) or, in the second column, to ``medseg/``
    itself (``io/dicom/``)."""
    names = []
    for path_tokens, what_tokens in _layout_rows():
        if not path_tokens[0].startswith("medseg/"):
            continue
        first = path_tokens[0].removeprefix("medseg/")
        base = first if first.endswith("/") else first.rpartition("/")[0]
        for in_paths, tokens in ((True, path_tokens), (False, what_tokens)):
            for token in tokens:
                if token.startswith("medseg/"):  # a full path names its module anywhere
                    names.append((True, (token.removeprefix("medseg/"),)))
                elif in_paths:
                    names.append((True, (base + token,)))
                else:
                    names.append((False, (base + token, token)))
    return names


def _entries(folder: Path) -> list[str]:
    """Modules and packages in ``folder``, as ``x.py`` and ``x/`` relative to ``medseg/``."""
    found = []
    for path in sorted(folder.iterdir()):
        relative = path.relative_to(PACKAGE).as_posix()
        if path.suffix == ".py" and path.name != "__init__.py":
            found.append(relative)
        elif path.is_dir() and (path / "__init__.py").is_file():
            found.append(relative + "/")
    return found


@pytest.mark.parametrize("entry", _entries(PACKAGE))
def test_every_module_and_package_of_medseg_has_a_row(entry: str) -> None:
    in_paths = {paths[0] for in_paths, paths in _medseg_names() if in_paths}
    assert entry in in_paths, f"README layout: no row names medseg/{entry}"


@pytest.mark.parametrize(
    "subpackage",
    [
        entry
        for package in PACKAGE.iterdir()
        if (package / "__init__.py").is_file()
        for entry in _entries(package)
        if entry.endswith("/")
    ],
)
def test_every_subpackage_is_named(subpackage: str) -> None:
    anywhere = {path for _, paths in _medseg_names() for path in paths}
    assert subpackage in anywhere, f"README layout: medseg/{subpackage} is not named"


def test_every_path_the_table_names_exists() -> None:
    missing = [
        paths[0]
        for _, paths in _medseg_names()
        if paths[0].endswith((".py", "/")) and not any((PACKAGE / p).exists() for p in paths)
    ]
    missing += [
        token
        for path_tokens, _ in _layout_rows()
        if not path_tokens[0].startswith("medseg/")
        for token in path_tokens
        if not (ROOT / token).exists()
    ]
    assert not missing, f"README layout names paths that do not exist: {missing}"


def test_every_guide_in_docs_is_linked_from_the_layout_table() -> None:
    section = (ROOT / "README.md").read_text().split("\n## Layout\n", 1)[1]
    [docs_row] = [line for line in section.splitlines() if line.startswith("| `docs/` |")]
    linked = set(re.findall(r"\(docs/([\w-]+\.md)\)", docs_row))
    assert linked == {path.name for path in (ROOT / "docs").glob("*.md")}
