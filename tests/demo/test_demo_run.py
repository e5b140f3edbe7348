"""``medseg demo``: phantoms as DICOM, ingested with their labels, on a fresh folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medseg.cli import app
from medseg.demo.phantom import PHANTOM_LABELS, sample_anatomy
from medseg.io.nifti import read_nifti
from medseg.manifest import read_label_names, read_manifest


def test_demo_ingests_every_phantom_with_its_label(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--cases", "3"])
    assert result.exit_code == 0, result.output
    assert "3 converted" in result.output and "0 failed" in result.output
    assert "3 preprocessed" in result.output
    assert len(list((tmp_path / "cache/cases").glob("*/done.json"))) == 3
    manifest = tmp_path / "ingested/manifest.jsonl"
    records = read_manifest(manifest)
    assert [r.case_id for r in records] == ["phantom_000", "phantom_001", "phantom_002"]
    assert read_label_names(manifest) == PHANTOM_LABELS
    for record in records:
        image = read_nifti(tmp_path / "ingested" / record.image)
        label = read_nifti(tmp_path / "ingested" / record.label)
        assert image.same_grid(label) and record.modality == "CT"
        liver = label.array == 1
        assert -20 < float(np.median(image.array[liver])) < 140  # soft tissue HU, not air


def test_ingested_organ_volumes_match_the_phantom_formulas(tmp_path: Path) -> None:
    CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--cases", "2", "--seed", "3"])
    seeds = np.random.SeedSequence(3).generate_state(2)  # how generate_demo_dataset seeds cases
    for record, case_seed in zip(
        read_manifest(tmp_path / "ingested/manifest.jsonl"), seeds, strict=True
    ):
        label = read_nifti(tmp_path / "ingested" / record.label)
        anatomy = sample_anatomy(int(case_seed))
        for value in (1, 2, 3, 4):
            measured_ml = float((label.array == value).sum()) * label.voxel_volume_ml
            assert measured_ml == pytest.approx(anatomy.volume_ml(value), rel=0.05)


def test_second_demo_run_does_no_work(tmp_path: Path) -> None:
    runner = CliRunner()
    runner.invoke(app, ["demo", "--out", str(tmp_path), "--cases", "2"])
    again = runner.invoke(app, ["demo", "--out", str(tmp_path), "--cases", "2"])
    assert again.exit_code == 0
    assert "0 converted, 2 unchanged" in again.output
    assert "0 preprocessed" in again.output and "2 unchanged" in again.output
