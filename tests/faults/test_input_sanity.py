"""A scan that cannot give a right answer gives an error (issue 14, section 2): NaN/Inf voxels,
a missing labels folder, a 4D scan for a 1-channel model, and what a failed case leaves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.io.nifti import read_nifti
from tests.faults.commands import model_options, run_medseg, said
from tests.faults.inputs import (
    PHANTOM_VOXELS,
    write_all_nan,
    write_four_d,
    write_phantom_with,
)
from tests.phantoms import small_phantom, write_phantom_dicom, write_phantom_nifti


def _predict(model: str, scans: Path, out: Path, *options: str) -> tuple[int, dict]:
    """``medseg predict`` with folder case ids: exit code and outcomes by case id."""
    result = run_medseg(
        "predict", scans, *model_options(model), "--out", out, "--case-ids", "folder", *options
    )
    report = json.loads((out / "predict_report.json").read_text())
    return result.exit_code, {outcome["case_id"]: outcome for outcome in report["outcomes"]}


@pytest.fixture
def good_and_one_nan(tmp_path: Path) -> Path:
    scans = tmp_path / "scans"
    write_phantom_nifti(scans / "good.nii.gz")
    write_phantom_with(scans / "one_nan.nii.gz", nan=1)
    return scans


@pytest.fixture
def non_finite_scans(tmp_path: Path) -> Path:
    """good, one NaN voxel, 3 NaN + 1 +Inf + 1 -Inf, all NaN."""
    scans = tmp_path / "scans"
    write_phantom_nifti(scans / "good.nii.gz")
    write_phantom_with(scans / "one_nan.nii.gz", nan=1)
    write_phantom_with(scans / "mixed.nii.gz", nan=3, positive_infinite=1, negative_infinite=1)
    write_all_nan(scans / "all_nan.nii.gz")
    return scans


def test_ingest_refuses_scans_with_non_finite_voxels_naming_file_and_count(
    non_finite_scans: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = run_medseg("ingest", non_finite_scans, "--out", out, "--case-ids", "folder")
    assert result.exit_code == 1, result.output
    report = json.loads((out / "ingest_report.json").read_text())
    reasons = {o["source"]: o["reason"] for o in report["outcomes"] if o["kind"] == "failed"}
    assert reasons.keys() == {"one_nan.nii.gz", "mixed.nii.gz", "all_nan.nii.gz"}
    assert reasons["one_nan.nii.gz"].startswith(f"1 NaN voxel of {PHANTOM_VOXELS:,} is not finite")
    assert reasons["mixed.nii.gz"].startswith(
        f"3 NaN, 1 +Inf and 1 -Inf voxels of {PHANTOM_VOXELS:,} are not finite"
    )
    assert "every voxel is non-finite" in reasons["all_nan.nii.gz"]
    assert sorted(p.name for p in (out / "images").glob("*.nii.gz")) == ["good.nii.gz"]
    assert "1 converted" in said(result) and "3 failed" in said(result)


def test_ingest_replace_min_puts_the_lowest_finite_value_and_records_it(
    non_finite_scans: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = run_medseg(
        "ingest",
        non_finite_scans,
        "--out",
        out,
        "--case-ids",
        "folder",
        "--non-finite",
        "replace-min",
    )
    assert result.exit_code == 1, result.output  # the all-NaN scan has no value to take
    stored = read_nifti(out / "images" / "mixed.nii.gz").array
    original = small_phantom(0)[0].array.astype(np.float32)
    assert np.isfinite(stored).all()
    lowest = float(original.min())
    assert [float(stored[10 + i, 10 + i, 10 + i]) for i in range(5)] == [lowest] * 5
    changed = stored != original
    assert int(changed.sum()) == 5 - sum(
        original[10 + i, 10 + i, 10 + i] == lowest for i in range(5)
    )
    sidecar = json.loads((out / "images" / "mixed.json").read_text())
    assert sidecar["metadata"]["non_finite_replaced"] == {
        "nan": 3,
        "positive_infinite": 1,
        "negative_infinite": 1,
        "voxels": PHANTOM_VOXELS,
        "value": lowest,
    }
    assert any("replaced by" in c for c in sidecar["corrections"])
    report = json.loads((out / "ingest_report.json").read_text())
    failed = [o["source"] for o in report["outcomes"] if o["kind"] == "failed"]
    assert failed == ["all_nan.nii.gz"]


def test_predict_fails_a_scan_with_one_nan_voxel_and_goes_on(
    phantom_model: str, good_and_one_nan: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    exit_code, outcomes = _predict(phantom_model, good_and_one_nan, out)
    assert exit_code == 1
    assert not outcomes["one_nan"]["ok"]
    assert outcomes["one_nan"]["error_type"] == "NonFiniteVoxelsError"
    assert f"1 NaN voxel of {PHANTOM_VOXELS:,}" in outcomes["one_nan"]["reason"]
    assert outcomes["good"]["ok"] and sum(outcomes["good"]["volumes_ml"].values()) > 100
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "good.nii.gz",
        "good.volumes.json",
        "predict_report.json",
    ]


def test_predict_replace_min_segments_the_scan_and_records_the_replacement(
    phantom_model: str, good_and_one_nan: Path, tmp_path: Path
) -> None:
    exit_code, outcomes = _predict(
        phantom_model, good_and_one_nan, tmp_path / "out", "--non-finite", "replace-min"
    )
    assert exit_code == 0
    repaired, good = outcomes["one_nan"], outcomes["good"]
    assert repaired["non_finite_replaced"]["nan"] == 1
    assert repaired["non_finite_replaced"]["value"] == float(small_phantom(0)[0].array.min())
    assert repaired["corrections"] and "replaced by" in repaired["corrections"][0]
    for structure, ml in good["volumes_ml"].items():  # one voxel changed: same segmentation
        assert repaired["volumes_ml"][structure] == pytest.approx(ml, rel=0.02, abs=0.5)


def test_batch_records_a_non_finite_scan_as_failed_and_the_replacement_in_result_json(
    phantom_model: str, good_and_one_nan: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    batch = [
        "batch",
        good_and_one_nan,
        *model_options(phantom_model),
        "--out",
        out,
        "--case-ids",
        "folder",
    ]
    result = run_medseg(*batch)
    assert result.exit_code == 1, result.output
    (failure,) = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert failure["case_id"] == "one_nan" and failure["error_type"] == "NonFiniteVoxelsError"
    assert f"1 NaN voxel of {PHANTOM_VOXELS:,}" in failure["reason"]
    assert (out / "good" / "result.json").is_file() and not (out / "one_nan").exists()

    again = run_medseg(*batch, "--non-finite", "replace-min")
    assert again.exit_code == 0, again.output
    result_json = json.loads((out / "one_nan" / "result.json").read_text())
    assert result_json["non_finite_replaced"]["nan"] == 1
    assert "replaced by" in result_json["corrections"][0]
    assert (out / "failures.jsonl").read_text() == ""


def test_ingest_with_a_missing_labels_folder_stops_before_any_work(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    write_phantom_nifti(scans / "good.nii.gz")
    out = tmp_path / "out"
    result = run_medseg("ingest", scans, "--out", out, "--labels", tmp_path / "no_such_labels")
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.output.splitlines() if line.strip()]
    assert line.startswith("error: ") and str(tmp_path / "no_such_labels") in line
    assert not out.exists()


def test_a_4d_scan_given_to_a_1_channel_model_names_its_shape_and_the_model_channels(
    phantom_model: str, tmp_path: Path
) -> None:
    scans = tmp_path / "scans"
    write_four_d(scans / "dynamic.nii.gz", volumes=3)
    write_phantom_nifti(scans / "good.nii.gz")
    exit_code, outcomes = _predict(phantom_model, scans, tmp_path / "out")
    assert exit_code == 1
    dynamic = outcomes["dynamic"]
    assert dynamic["error_type"] == "ScanChannelsError"
    assert "shape 49x39x33x3 (3 channels along its 4th axis)" in dynamic["reason"]
    assert "the model takes 1 input channel" in dynamic["reason"]
    assert outcomes["good"]["ok"]


def test_predict_leaves_nothing_of_a_case_that_fails_even_from_an_earlier_run(
    phantom_model: str, tmp_path: Path
) -> None:
    """A series without FrameOfReferenceUID reads fine but cannot become a DICOM SEG: the SEG,
    written after the label map and volumes, fails."""
    scans = tmp_path / "scans"
    for path in write_phantom_dicom(scans / "series", seed=1):
        dataset = pydicom.dcmread(path)
        del dataset.FrameOfReferenceUID
        dataset.save_as(path)
    write_phantom_nifti(scans / "good.nii.gz")
    out = tmp_path / "out"
    assert _predict(phantom_model, scans, out, "--no-dicom-seg")[0] == 0
    assert (out / "series.nii.gz").is_file() and (out / "series.volumes.json").is_file()

    exit_code, outcomes = _predict(phantom_model, scans, out)
    assert exit_code == 1
    assert outcomes["series"]["error_type"] == "DicomSegSourceError"
    assert "FrameOfReferenceUID" in outcomes["series"]["reason"]
    assert sorted(p.name for p in out.iterdir() if p.name != ".model_cache") == [
        "good.nii.gz",
        "good.volumes.json",
        "predict_report.json",
    ]
