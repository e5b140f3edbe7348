"""The ingest stage and ``medseg ingest``: outputs, manifest, summary, exit codes, PHI, resuming."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from medseg.cli import app
from medseg.ingest import EXIT_SOME_FAILED, OutcomeKind, ingest
from medseg.io.dicom import read_dicom_series
from medseg.io.nifti import read_nifti, write_nifti
from medseg.manifest import read_manifest, sha256_file

PHI = {
    "PatientName": "DOE^JANE",
    "PatientID": "PID12345",
    "PatientBirthDate": "19700101",
    "AccessionNumber": "ACC98765",
}
D2N = "dicom2nifti_tests/tests/data"


def _copy_with_phi(source: Path, target: Path, *, description: str) -> None:
    """Copy a series, stamping identifying values into every file (and its description)."""
    target.mkdir(parents=True)
    for index, path in enumerate(sorted(source.glob("*.dcm"))):
        dataset = pydicom.dcmread(path)
        for keyword, value in PHI.items():
            setattr(dataset, keyword, value)
        dataset.SeriesDescription = description
        name = f"slice {index}" if index % 2 else f"IMG{index:04d}"  # spaces, no extension
        dataset.save_as(target / name)


@pytest.fixture()
def scan_folder(shared_data: Path, tmp_path: Path) -> Path:
    root = tmp_path / "incoming"
    _copy_with_phi(
        shared_data / D2N / "generic/anatomical/001", root / "a" / "mr", description="T1 DOE"
    )
    _copy_with_phi(shared_data / D2N / "ge/anatomical/001", root / "b", description="Sag T1 3D")
    shutil.copytree(shared_data / D2N / "failing/notavolume/001", root / "c")
    shutil.copytree(shared_data / D2N / "generic/rgb/001", root / "d")
    shutil.copy(
        shared_data / "msd_hippocampus/images/hippocampus_001.nii.gz", root / "hippo.nii.gz"
    )
    (root / "notes.txt").write_text("not a scan")
    return root


def test_cli_converts_good_scans_reports_bad_ones_and_exits_1(
    scan_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["ingest", str(scan_folder), "--out", str(out)])
    assert result.exit_code == EXIT_SOME_FAILED == 1, result.output
    assert (
        "3 converted" in result.output
        and "1 skipped" in result.output
        and "1 failed" in result.output
    )
    assert "4 different images at the same slice position" in result.output
    records = {r.modality: r for r in read_manifest(out / "manifest.jsonl")}
    assert (
        sorted(records) == ["MR", "MR", "unknown"][:0]
        or len(read_manifest(out / "manifest.jsonl")) == 3
    )
    for record in read_manifest(out / "manifest.jsonl"):
        image = out / record.image
        assert sha256_file(image) == record.sha256
        volume = read_nifti(image)
        assert list(volume.shape) == record.shape and volume.orientation == "RAS"
        assert record.source and len(record.source) == 16
    report = json.loads((out / "ingest_report.json").read_text())
    assert report["counts"] == {"converted": 3, "skipped": 1, "failed": 1}
    failed = [o for o in report["outcomes"] if o["kind"] == "failed"]
    assert "source" not in failed[0] and failed[0]["case_id"]  # hashed ids: no paths
    assert "4 different images at the same slice position" in failed[0]["reason"]


def test_converted_dicom_equals_the_direct_read(scan_folder: Path, tmp_path: Path) -> None:
    report = ingest(scan_folder, tmp_path / "out", case_ids="folder")
    converted = {o.source: o for o in report.of_kind(OutcomeKind.CONVERTED)}
    outcome = converted["b series 4"]
    stored = read_nifti(tmp_path / "out" / outcome.record.image)
    direct = read_dicom_series(scan_folder / "b")
    assert np.array_equal(stored.array, direct.array)
    assert np.allclose(stored.affine_ras, direct.affine_ras, atol=1e-4)


def test_no_patient_identifier_reaches_any_output(scan_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ingest(scan_folder, out)
    for path in out.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for value in [*PHI.values(), "DOE", "JANE"]:
                assert value.encode() not in content, f"{value} leaked into {path}"
    sidecars = [json.loads(p.read_text()) for p in (out / "images").glob("*.json")]
    by_description = {s["metadata"].get("series_description") for s in sidecars}
    assert "Sag T1 3D" in by_description  # a harmless description is kept
    assert any(s["metadata"].get("series_description_withheld") for s in sidecars)
    assert all("series_uid_hash" in s["metadata"] for s in sidecars if s["modality"] == "MR")


def test_second_run_converts_nothing_and_a_touched_input_is_redone(
    scan_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    ingest(scan_folder, out, case_ids="folder")
    images = sorted((out / "images").glob("*.nii.gz"))
    stamps = {p: p.stat().st_mtime_ns for p in images}
    again = ingest(scan_folder, out, case_ids="folder")
    assert len(again.of_kind(OutcomeKind.UNCHANGED)) == 3
    assert not again.of_kind(OutcomeKind.CONVERTED)
    assert {p: p.stat().st_mtime_ns for p in images} == stamps
    assert len(read_manifest(out / "manifest.jsonl")) == 3
    touched = scan_folder / "hippo.nii.gz"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    third = ingest(scan_folder, out, case_ids="folder")
    assert [o.source for o in third.of_kind(OutcomeKind.CONVERTED)] == ["hippo.nii.gz"]


def test_a_case_interrupted_before_its_sidecar_is_converted_again(
    scan_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = ingest(scan_folder, out)
    victim = first.of_kind(OutcomeKind.CONVERTED)[0]
    (out / "images" / f"{victim.case_id}.json").unlink()
    second = ingest(scan_folder, out)
    assert [o.case_id for o in second.of_kind(OutcomeKind.CONVERTED)] == [victim.case_id]
    assert not list(out.rglob(".tmp-*"))


def test_labels_are_paired_by_folder_case_id_and_checked(shared_data: Path, tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    shutil.copytree(shared_data / D2N / "ge/anatomical/001", scans / "case_a")
    shutil.copytree(shared_data / D2N / "hitachi/anatomical/001", scans / "case_b")
    image_a = read_dicom_series(scans / "case_a")
    labels = tmp_path / "labels"
    write_nifti(
        image_a.with_array((image_a.array > 100).astype(np.uint8)), labels / "case_a.nii.gz"
    )
    wrong = read_dicom_series(scans / "case_a")  # case_b's label on case_a's grid: must be refused
    write_nifti(wrong.with_array(np.zeros(wrong.shape, np.uint8)), labels / "case_b.nii.gz")
    report = ingest(scans, tmp_path / "out", case_ids="folder", labels_dir=labels)
    records = {r.case_id: r for r in read_manifest(tmp_path / "out/manifest.jsonl")}
    assert sorted(records) == ["case_a"]
    assert records["case_a"].label == "labels/case_a.nii.gz"
    stored = read_nifti(tmp_path / "out" / records["case_a"].label)
    assert int(stored.array.sum()) == int((image_a.array > 100).sum())
    (failed,) = report.of_kind(OutcomeKind.FAILED)
    assert "case_b.nii.gz" in failed.reason and "does not match" in failed.reason


def test_all_good_input_exits_0(shared_data: Path, tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    shutil.copytree(shared_data / D2N / "generic/compressed_jpegls/001", scans)
    result = CliRunner().invoke(app, ["ingest", str(scans), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
