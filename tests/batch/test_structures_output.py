"""``--structures``: ``medseg predict`` and ``medseg batch`` write and measure only the
structures asked for (by name or label value), voxel for voxel as in the full prediction, and
refuse a structure the model lacks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
from typer.testing import CliRunner

from medseg.cli import app
from medseg.io.nifti import read_nifti
from tests.batch.conftest import BatchModel, batch_command
from tests.batch.trees import ScanTree
from tests.phantoms import PHANTOM_LABELS


def _predict(scans: Path, model: BatchModel, out: Path, *options: str) -> None:
    command = ["predict", str(scans), "--model", model.uri, "--out", str(out)]
    command += ["--tracking-uri", model.tracking_uri, "--case-ids", "folder", *options]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output


def test_predict_and_batch_write_only_the_selected_structures_as_in_the_full_prediction(
    batch_model: BatchModel, tmp_path: Path
) -> None:
    tree = ScanTree(tmp_path / "scans")
    tree.dicom("d", 0)
    _predict(tree.root, batch_model, tmp_path / "full")
    full = read_nifti(tmp_path / "full/d.nii.gz").array
    values, counts = np.unique(full[full > 0], return_counts=True)
    first, second = (int(v) for v in values[np.argsort(counts)[::-1][:2]])  # found the most
    asked = f"{PHANTOM_LABELS[first]},{second}"  # a name and a label value
    _predict(tree.root, batch_model, tmp_path / "some", "--structures", asked)

    some = read_nifti(tmp_path / "some/d.nii.gz").array
    np.testing.assert_array_equal(some, np.where(np.isin(full, [first, second]), full, 0))
    selected = [PHANTOM_LABELS[value] for value in sorted([first, second])]
    volumes = json.loads((tmp_path / "some/d.volumes.json").read_text())
    full_volumes = json.loads((tmp_path / "full/d.volumes.json").read_text())
    assert sorted(volumes) == sorted(selected)  # JSON files keep their keys sorted
    assert all(volumes[name] == full_volumes[name] for name in selected)
    seg = pydicom.dcmread(tmp_path / "some/d_seg.dcm")
    assert sorted(s.SegmentLabel for s in seg.SegmentSequence) == sorted(selected)
    report = json.loads((tmp_path / "some/predict_report.json").read_text())
    assert report["structures"] == selected
    assert sorted(report["outcomes"][0]["volumes_ml"]) == sorted(selected)

    out = tmp_path / "batch"
    options = ("--case-ids", "folder", "--structures", asked)
    result = CliRunner().invoke(app, batch_command(tree.root, batch_model, out, *options))
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(read_nifti(out / "d/d.nii.gz").array, some)
    record = json.loads((out / "d/result.json").read_text())
    assert record["structures"] == record["structures_selected"] == selected
    with (out / "summary.csv").open() as table:
        header = next(csv.reader(table))
    assert [column for column in header if column.endswith("_ml")] == [
        f"{name}_ml" for name in selected
    ]


def test_an_unknown_structure_is_refused_with_the_known_ones(
    batch_model: BatchModel, tmp_path: Path
) -> None:
    tree = ScanTree(tmp_path / "scans")
    tree.nifti("a.nii.gz", 0)
    command = ["predict", str(tree.root), "--model", batch_model.uri, "--out", str(tmp_path / "p")]
    command += ["--tracking-uri", batch_model.tracking_uri, "--structures", "livr,spleen"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "--structures: unknown structure 'livr'; known: liver, spleen," in message
    assert "did you mean 'liver'?" in message
    assert not (tmp_path / "p" / "a.nii.gz").exists()
    options = ("--structures", "9")
    result = CliRunner().invoke(
        app, batch_command(tree.root, batch_model, tmp_path / "b", *options)
    )
    assert result.exit_code == 2
    assert "structures: unknown structure '9'; known: liver" in " ".join(result.output.split())
