"""``--radiomics``: shape and first-order features per structure in JSON and CSV, on the scan's
own intensities, from ``medseg batch`` and ``medseg predict``; a rerun without it leaves no
stale features."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medseg.cli import app
from medseg.evaluate.radiomics import FEATURE_NAMES
from tests.batch.conftest import BatchModel, batch_command, predict_command
from tests.batch.trees import ScanTree


def _check_radiomics(folder: Path, case_id: str) -> None:
    volumes = json.loads((folder / f"{case_id}.volumes.json").read_text())
    written = json.loads((folder / f"{case_id}.radiomics.json").read_text())
    assert written["settings"]["binWidth"] == 25.0
    features = written["structures"]
    assert list(features) == list(volumes)  # every structure, found or not
    found = [name for name, stats in volumes.items() if stats["voxels"]]
    assert found, "the model found no structure"
    for name, stats in volumes.items():
        if name not in found:
            assert all(value is None for value in features[name].values())
            continue
        # the scan's own values (HU), not the network's normalised input
        mean = features[name]["original_firstorder_Mean"]  # volumes.json: 5 decimals
        assert mean == pytest.approx(stats["intensity"], abs=1e-4)
        median = features[name]["original_firstorder_Median"]
        assert median == pytest.approx(stats["intensity_median"], abs=1e-4)
        voxel_volume = features[name]["original_shape_VoxelVolume"]
        assert voxel_volume == pytest.approx(stats["volume"], abs=1e-3)
        assert 0 < features[name]["original_shape_Sphericity"] <= 1
    with (folder / f"{case_id}.radiomics.csv").open(newline="") as table:
        rows = list(csv.DictReader(table))
    assert list(rows[0]) == ["case_id", "structure", "label", *FEATURE_NAMES]
    assert sorted(row["structure"] for row in rows) == sorted(volumes)
    assert [int(row["label"]) for row in rows] == sorted(int(row["label"]) for row in rows)
    for row in rows:
        assert row["case_id"] == case_id and int(row["label"]) > 0
        for feature in FEATURE_NAMES:
            value = features[row["structure"]][feature]
            assert row[feature] == ("" if value is None else repr(value))


def test_batch_and_predict_write_radiomics_features_per_structure(
    batch_model: BatchModel, tmp_path: Path
) -> None:
    tree = ScanTree(tmp_path / "scans")
    tree.nifti("a.nii.gz", 0)
    out = tmp_path / "batch"
    options = ("--case-ids", "folder", "--radiomics")
    result = CliRunner().invoke(app, batch_command(tree.root, batch_model, out, *options))
    assert result.exit_code == 0, result.output
    _check_radiomics(out / "a", "a")
    listed = json.loads((out / "a" / "result.json").read_text())["outputs"]
    assert {"a.radiomics.json", "a.radiomics.csv"} <= set(listed)

    predicted = tmp_path / "predict"
    common = predict_command(tree.root / "a.nii.gz", batch_model, predicted, "--case-ids", "folder")
    result = CliRunner().invoke(app, [*common, "--radiomics"])
    assert result.exit_code == 0, result.output
    _check_radiomics(predicted, "a")
    result = CliRunner().invoke(app, common)  # again without: the features go with the old case
    assert result.exit_code == 0, result.output
    assert not (predicted / "a.radiomics.json").exists()
    assert not (predicted / "a.radiomics.csv").exists()
