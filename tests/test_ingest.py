"""The ingest stage and ``medseg ingest``: outputs, manifest, summary, exit codes, PHI, resuming."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from medseg.cli import app
from medseg.demo.dicom_writer import TransferSyntax
from medseg.ingest import EXIT_SOME_FAILED, OutcomeKind, ingest
from medseg.io.dicom import read_dicom_series
from medseg.io.nifti import read_nifti, write_nifti
from medseg.manifest import read_manifest, sha256_file
from tests.phantoms import (
    small_phantom,
    stamp_dicom,
    write_phantom_dicom,
    write_phantom_nifti,
    write_secondary_capture,
)

PHI = {
    "PatientName": "DOE^JANE",
    "PatientID": "PID12345",
    "PatientBirthDate": "19700101",
    "AccessionNumber": "ACC98765",
}


def _phantom_series_with_phi(folder: Path, seed: int, *, description: str, **tags: object) -> None:
    """A phantom CT series with identifying values in every file (and its description), in
    files named with spaces and without extension."""
    files = write_phantom_dicom(folder, seed)
    stamp_dicom(files, **PHI, SeriesDescription=description, **tags)
    for index, path in enumerate(files):
        path.rename(folder / (f"slice {index}" if index % 2 else f"IMG{index:04d}"))


def _four_images_at_one_position(folder: Path) -> None:
    """A phantom series whose slices 10 to 13 all claim the position of slice 13."""
    files = write_phantom_dicom(folder, 3)
    position = pydicom.dcmread(files[13], stop_before_pixels=True).ImagePositionPatient
    stamp_dicom(files[10:13], ImagePositionPatient=position)


@pytest.fixture()
def scan_folder(tmp_path: Path) -> Path:
    """Two good phantom series with PHI, a series that is not one volume, a screenshot, a NIfTI
    scan and a text file."""
    root = tmp_path / "incoming"
    _phantom_series_with_phi(root / "a" / "ct", 1, description="Abdomen DOE")
    _phantom_series_with_phi(root / "b", 2, description="Abdomen 3.0 B30f", SeriesNumber=4)
    _four_images_at_one_position(root / "c")
    write_secondary_capture(root / "d" / "screenshot.dcm", patient_name=PHI["PatientName"])
    write_phantom_nifti(root / "phantom.nii.gz", 4)
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
    records = read_manifest(out / "manifest.jsonl")
    assert sorted(record.modality for record in records) == ["CT", "CT", "unknown"]
    assert sorted(record.shape for record in records) == [[49, 39, 33]] * 3
    for record in records:
        image = out / record.image
        assert sha256_file(image) == record.sha256
        volume = read_nifti(image)
        assert list(volume.shape) == record.shape and volume.orientation == "RAS"
        assert record.source and len(record.source) == 16
    report = json.loads((out / "ingest_report.json").read_text())
    assert report["counts"] == {"converted": 3, "skipped": 1, "failed": 1}
    [failed] = [o for o in report["outcomes"] if o["kind"] == "failed"]
    assert "source" not in failed and failed["case_id"]  # hashed ids: no paths
    assert "4 different images at the same slice position" in failed["reason"]


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
    assert "Abdomen 3.0 B30f" in by_description  # a harmless description is kept
    assert any(s["metadata"].get("series_description_withheld") for s in sidecars)
    from_dicom = [s for s in sidecars if s["modality"] == "CT"]
    assert len(from_dicom) == 2 and all("series_uid_hash" in s["metadata"] for s in from_dicom)


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
    touched = scan_folder / "phantom.nii.gz"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    third = ingest(scan_folder, out, case_ids="folder")
    assert [o.source for o in third.of_kind(OutcomeKind.CONVERTED)] == ["phantom.nii.gz"]


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


def test_labels_are_paired_by_folder_case_id_and_checked(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    write_phantom_dicom(scans / "case_a", 1)
    write_phantom_dicom(scans / "case_b", 2)
    labels = tmp_path / "labels"
    label_a = small_phantom(1)[1]
    write_nifti(label_a, labels / "case_a.nii.gz")
    # case_b's label on case_a's grid (each phantom is centred on its anatomy): refused
    write_nifti(label_a.with_array(np.zeros(label_a.shape, np.uint8)), labels / "case_b.nii.gz")
    report = ingest(scans, tmp_path / "out", case_ids="folder", labels_dir=labels)
    records = {r.case_id: r for r in read_manifest(tmp_path / "out/manifest.jsonl")}
    assert sorted(records) == ["case_a"]
    assert records["case_a"].label == "labels/case_a.nii.gz"
    stored = read_nifti(tmp_path / "out" / records["case_a"].label)
    assert stored.same_grid(read_dicom_series(scans / "case_a"))
    assert np.array_equal(stored.array, label_a.array)
    (failed,) = report.of_kind(OutcomeKind.FAILED)
    assert "case_b.nii.gz" in failed.reason and "does not match" in failed.reason


def test_all_good_input_exits_0(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    write_phantom_dicom(scans, 5, transfer_syntax=TransferSyntax.JPEGLS_LOSSLESS)
    result = CliRunner().invoke(app, ["ingest", str(scans), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
