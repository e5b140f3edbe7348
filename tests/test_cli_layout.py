"""The command line stays one small module per command group (issue 15: none over ~250 lines)."""

from __future__ import annotations

from pathlib import Path

import pytest

import medseg.cli

CLI_FOLDER = Path(medseg.cli.__file__).parent
MAX_LINES = 250
MODULES = sorted(CLI_FOLDER.glob("*.py"))


def test_the_cli_is_a_package_of_several_modules() -> None:
    assert len(MODULES) >= 10, [m.name for m in MODULES]
    assert not list(CLI_FOLDER.parent.glob("cli_*.py")), "CLI modules outside medseg/cli/"


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.name)
def test_no_cli_module_is_over_250_lines(module: Path) -> None:
    lines = len(module.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module.name}: {lines} lines; split the command group"
