"""``medseg batch`` over a tree of phantoms: NIfTI, a DICOM series, corrupt files; resume and
force."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from medseg.batch.runner import BatchSettings, run_batch
from medseg.cli import app
from medseg.ingest.discovery import discover_scans
from medseg.io.nifti import read_nifti
from medseg.phi import hash_identifier
from tests.batch.conftest import BatchModel, batch_command
from tests.batch.trees import ScanTree
from tests.phantoms import PHANTOM_LABELS

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def expected_case_ids(tree: ScanTree) -> dict[str, str]:
    """Input (relative path) -> anonymous case id, computed from the files themselves."""
    ids = {}
    for relative in tree.good:
        path = tree.root / relative
        if path.is_dir():  # a DICOM series: CT modality + hash of its SeriesInstanceUID
            uid = pydicom.dcmread(next(path.iterdir()), stop_before_pixels=True).SeriesInstanceUID
            ids[relative] = f"ct_{hash_identifier(uid)}"
        else:
            ids[relative] = f"nifti_{hash_identifier(relative)}"
    return ids


def file_stamps(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every file under ``folder``: changes if a file is rewritten."""
    return {
        str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_batch_writes_every_scan_records_the_corrupt_ones_and_resumes(
    mixed_tree: ScanTree, batch_model: BatchModel, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    command = batch_command(mixed_tree.root, batch_model, out, "--workers", "2")
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 1, result.output  # two corrupt files
    assert "4 done" in result.output and "2 failed" in result.output
    ids = expected_case_ids(mixed_tree)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        [*ids.values(), "discovery.json", "failures.jsonl", "summary.csv"]
    )

    # outputs per scan: label map on the scan's grid, volumes, DICOM SEG for the series
    for relative, case_id in ids.items():
        folder = out / case_id
        labels = read_nifti(folder / f"{case_id}.nii.gz")
        if relative.endswith(".nii.gz"):
            assert labels.same_grid(read_nifti(mixed_tree.root / relative).to_closest_ras())
        record = json.loads((folder / "result.json").read_text())
        assert record["status"] == "done" and "source" not in record
        assert record["model"] == batch_model.uri
        assert set(record["outputs"]) <= {p.name for p in folder.iterdir()}
    dicom_id = ids["dicom/SMITH^JOHN"]
    seg = pydicom.dcmread(out / dicom_id / f"{dicom_id}_seg.dcm")
    source = pydicom.dcmread(next((mixed_tree.root / "dicom/SMITH^JOHN").iterdir()))
    assert seg.SOPClassUID == SEG_STORAGE
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    series = discover_scans(mixed_tree.root / "dicom/SMITH^JOHN").tasks[0].read()
    assert read_nifti(out / dicom_id / f"{dicom_id}.nii.gz").same_grid(series)

    # failures.jsonl: the corrupt files, with reasons, and no path in them
    failures = {
        f["case_id"]: f for f in map(json.loads, (out / "failures.jsonl").read_text().splitlines())
    }
    truncated_id = f"nifti_{hash_identifier('inbox/truncated.nii.gz')}"
    truncated = failures[truncated_id]
    garbage = failures[f"unreadable_{hash_identifier('dicom/garbage.dcm')}"]
    assert truncated["error_type"] == "NiftiError"
    assert truncated["reason"].startswith(f"{truncated_id}: cannot read NIfTI")
    assert garbage["error_type"] == "NotDicomFile"
    assert garbage["reason"] == "named like DICOM but not a DICOM file"
    assert len(failures) == 2 and not any("source" in f for f in failures.values())

    # summary.csv: one row per scan, volume columns equal to the volumes.json values
    rows = {row["case_id"]: row for row in csv.DictReader((out / "summary.csv").open())}
    assert sorted(rows) == sorted([*ids.values(), *failures])
    structure_columns = [c for c in next(iter(rows.values())) if c.endswith("_ml")]
    assert structure_columns == [f"{name}_ml" for value, name in PHANTOM_LABELS.items() if value]
    for case_id in ids.values():
        volumes = json.loads((out / case_id / f"{case_id}.volumes.json").read_text())
        record = json.loads((out / case_id / "result.json").read_text())
        for name, statistics in volumes.items():
            assert float(rows[case_id][f"{name}_ml"]) == pytest.approx(
                statistics["volume_ml"], abs=1e-6
            )
            # confidence: the same in volumes.json, result.json and summary.csv, a probability
            # of the largest class (>= 1/K) where the structure was found, else none
            confidence = statistics["confidence"]
            assert record["confidence"][name] == confidence
            if statistics["voxels"]:
                assert 1 / len(PHANTOM_LABELS) <= confidence <= 1
                assert float(rows[case_id][f"{name}_confidence"]) == confidence
                assert 1 / len(PHANTOM_LABELS) <= statistics["boundary_confidence"] <= 1
            else:
                assert confidence is None and rows[case_id][f"{name}_confidence"] == ""
        assert rows[case_id]["status"] == "done" and float(rows[case_id]["seconds"]) > 0
    assert {rows[c]["status"] for c in failures} == {"failed"}

    # nothing written names the patients' folders
    written = (
        "".join(p.read_text() for p in out.rglob("*.json*")) + (out / "summary.csv").read_text()
    )
    assert "DOE^JANE" not in written and "SMITH^JOHN" not in written and "case_b" not in written

    # a second run skips every complete scan and rewrites none of their files
    before = {case_id: file_stamps(out / case_id) for case_id in ids.values()}
    again = run_batch(
        mixed_tree.root,
        batch_model.uri,
        out,
        settings=BatchSettings(workers=2, tracking_uri=batch_model.tracking_uri),
    )
    assert sorted(again.skipped) == sorted(ids.values())
    assert again.done == [] and len(again.failed) == 2 and again.exit_code == 1
    assert {case_id: file_stamps(out / case_id) for case_id in ids.values()} == before

    # --force redoes them, with the same volumes
    forced = run_batch(
        mixed_tree.root,
        batch_model.uri,
        out,
        settings=BatchSettings(workers=2, force=True, tracking_uri=batch_model.tracking_uri),
    )
    assert sorted(r.case_id for r in forced.done) == sorted(ids.values())
    for case_id in ids.values():
        stamps = file_stamps(out / case_id)
        assert stamps.keys() == before[case_id].keys()
        assert stamps["result.json"] != before[case_id]["result.json"]
        volumes = json.loads((out / case_id / f"{case_id}.volumes.json").read_text())
        assert float(rows[case_id]["liver_ml"]) == volumes["liver"]["volume_ml"]
    assert list((out / ".staging").iterdir()) == []


def test_a_model_that_does_not_load_stops_the_batch_without_blaming_the_scans(
    tmp_path: Path,
) -> None:
    tree = ScanTree(tmp_path / "scans")
    tree.nifti("a.nii.gz", 0)
    out = tmp_path / "out"
    missing = tmp_path / "no_such_model"
    result = CliRunner().invoke(
        app, ["batch", str(tree.root), "--model", str(missing), "--out", str(out)]
    )
    assert result.exit_code == 2
    assert f"{missing}: cannot load the model" in result.output
    assert not (out / ".failures").exists() and not list(out.glob("*/result.json"))
