"""``--meshes``: an STL and an OBJ per structure found, in scanner millimetres, their surface
areas in the volumes, from ``medseg batch`` and ``medseg predict``; a rerun without it leaves
no stale meshes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trimesh
from typer.testing import CliRunner

from medseg.cli import app
from tests.batch.conftest import BatchModel, batch_command, predict_command
from tests.batch.trees import ScanTree


def _check_meshes(folder: Path, volumes: dict) -> None:
    found = {name for name, stats in volumes.items() if stats["voxels"]}
    assert found, "the model found no structure"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{name}{suffix}" for name in found for suffix in (".obj", ".stl")
    )
    for name, stats in volumes.items():
        if name not in found:
            assert stats["surface_area_mm2"] == 0.0
            continue
        mesh = trimesh.load(folder / f"{name}.stl", process=True)
        assert mesh.area == pytest.approx(stats["surface_area_mm2"], rel=1e-3)
        assert mesh.is_winding_consistent and mesh.volume > 0


def test_batch_and_predict_write_a_mesh_per_structure_found(
    batch_model: BatchModel, tmp_path: Path
) -> None:
    tree = ScanTree(tmp_path / "scans")
    tree.nifti("a.nii.gz", 0)
    out = tmp_path / "batch"
    options = ("--case-ids", "folder", "--meshes")
    result = CliRunner().invoke(app, batch_command(tree.root, batch_model, out, *options))
    assert result.exit_code == 0, result.output
    volumes = json.loads((out / "a" / "a.volumes.json").read_text())
    _check_meshes(out / "a" / "a.meshes", volumes)
    assert "a.meshes" in json.loads((out / "a" / "result.json").read_text())["outputs"]

    predicted = tmp_path / "predict"
    common = predict_command(tree.root / "a.nii.gz", batch_model, predicted, "--case-ids", "folder")
    result = CliRunner().invoke(app, [*common, "--meshes"])
    assert result.exit_code == 0, result.output
    _check_meshes(predicted / "a.meshes", json.loads((predicted / "a.volumes.json").read_text()))
    result = CliRunner().invoke(app, common)  # again without: the meshes go with the old case
    assert result.exit_code == 0, result.output
    assert not (predicted / "a.meshes").exists()
    assert "surface_area_mm2" not in json.loads((predicted / "a.volumes.json").read_text())["liver"]
