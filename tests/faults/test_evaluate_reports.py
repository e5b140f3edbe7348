"""``medseg evaluate``: an undefined metric reads the same on the console, in summary.json and in
metrics.csv (empty, null, empty); a grid mismatch says what differs, naming both files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medseg.io.nifti import write_nifti
from medseg.volume import Volume
from tests.faults.test_cli_errors import run_cli

SPACING_MM = (2.0, 2.0, 3.0)
NAMES = {"0": "background", "1": "liver", "2": "spleen", "3": "kidney"}


def _label_map(path: Path, structures: list[int], *, origin_mm=(0.0, 0.0, 0.0)) -> Path:
    """A 24^3 map with a cube of each structure (liver 1, spleen 2) where it is present."""
    array = np.zeros((24, 24, 24), np.uint8)
    cubes = {1: np.s_[2:10, 2:10, 2:10], 2: np.s_[12:20, 12:20, 12:20]}
    for value in structures:
        array[cubes[value]] = value
    affine = np.diag([*SPACING_MM, 1.0])
    affine[:3, 3] = origin_mm
    return write_nifti(Volume(array, affine), path)


@pytest.fixture
def evaluated(tmp_path: Path) -> tuple[str, Path]:
    """Evaluate one case whose prediction misses the spleen; no map holds the kidney."""
    _label_map(tmp_path / "pred" / "case.nii.gz", [1])
    _label_map(tmp_path / "ref" / "case.nii.gz", [1, 2])
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(NAMES))
    result = run_cli(
        "evaluate", tmp_path / "pred", tmp_path / "ref", "--out", tmp_path / "report",
        "--labels", labels,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result.output, tmp_path / "report"


def _console_row(output: str, structure: str) -> dict[str, str]:
    columns = ["structure", "dice", "iou", "hd95_mm", "nsd"]
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if cells and cells[0] == structure:
            return dict(zip(columns, cells, strict=False))
    raise AssertionError(f"no row for {structure}:\n{output}")


def _csv_row(report: Path, structure: str) -> dict[str, str]:
    with (report / "metrics.csv").open() as file:
        return next(row for row in csv.DictReader(file) if row["structure"] == structure)


def test_hd95_of_a_structure_the_prediction_misses_is_empty_everywhere(
    evaluated: tuple[str, Path],
) -> None:
    output, report = evaluated
    summary = json.loads((report / "summary.json").read_text())
    console, table = _console_row(output, "spleen"), _csv_row(report, "spleen")
    assert (console["hd95_mm"], table["hd95_mm"], summary["structures"]["spleen"]["hd95_mm"]) == (
        "",
        "",
        None,
    )
    # Dice and NSD of the miss are defined: 0, written as numbers everywhere
    assert (console["dice"], table["dice"], summary["structures"]["spleen"]["dice"]) == (
        "0.0000",
        "0",
        0.0,
    )
    assert (console["nsd"], table["nsd"], summary["structures"]["spleen"]["nsd"]) == (
        "0.0000",
        "0",
        0.0,
    )
    assert summary["mean"]["hd95_mm"] is None  # a missed structure is not averaged away
    assert "Empty cell = undefined" in output


def test_a_structure_in_neither_map_is_empty_everywhere(evaluated: tuple[str, Path]) -> None:
    output, report = evaluated
    summary = json.loads((report / "summary.json").read_text())
    console, table = _console_row(output, "kidney"), _csv_row(report, "kidney")
    for metric in ("dice", "iou", "hd95_mm", "nsd"):
        assert (console[metric], table[metric], summary["structures"]["kidney"][metric]) == (
            "",
            "",
            None,
        ), metric


def test_defined_values_agree_between_console_csv_and_json(evaluated: tuple[str, Path]) -> None:
    output, report = evaluated
    summary = json.loads((report / "summary.json").read_text())
    console, table = _console_row(output, "liver"), _csv_row(report, "liver")
    assert console["dice"] == "1.0000" and table["dice"] == "1"
    assert summary["structures"]["liver"] == pytest.approx(
        {
            "dice": 1.0,
            "iou": 1.0,
            "hd95_mm": 0.0,
            "nsd": 1.0,
            "volume_prediction_ml": 512 * 12 / 1000,
            "volume_reference_ml": 512 * 12 / 1000,
        }
    )


def test_a_grid_mismatch_names_both_files_and_what_differs(tmp_path: Path) -> None:
    prediction = _label_map(tmp_path / "pred" / "case.nii.gz", [1, 2], origin_mm=(30.0, 0, 0))
    reference = _label_map(tmp_path / "ref" / "case.nii.gz", [1, 2])
    result = run_cli("evaluate", prediction.parent, reference.parent, "--out", tmp_path / "r")
    assert result.exit_code == 1, result.output  # that case failed; the others would go on
    assert "0 cases evaluated, 1 failed, 0 without prediction, 0 without reference" in result.output
    reason = json.loads((tmp_path / "r" / "summary.json").read_text())["failed"]["case"]
    assert reason == (
        f"prediction {prediction} and reference {reference} are on different voxel grids: "
        "origin (30, 0, 0) vs (0, 0, 0) mm, 30 mm apart "
        "(same shape 24x24x24 voxels, spacing 2x2x3 mm)"
    )
