"""DICOM ingest with a channel rule: the series of one study that the rule names become the
channels of one case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from medseg.cli import app
from medseg.ingest import EXIT_SOME_FAILED
from medseg.io.nifti import read_nifti
from medseg.manifest import read_manifest
from tests.phantoms import small_phantom, stamp_dicom, write_phantom_dicom

RULE = """channels:
  - {name: T1, series_description: "*t1*"}
  - {name: T2, series_description: "*t2*"}
"""


def write_study_series(folder: Path, seed: int, *, study: str, description: str) -> None:
    """Phantom ``seed`` as a series of study ``study`` (its own series UID per folder)."""
    stamp_dicom(
        write_phantom_dicom(folder, seed, patient_id=f"{study}-{folder.name}"),
        StudyInstanceUID=f"1.2.826.0.1.3680043.8.498.{study}",
        PatientID=f"P{study}",
        SeriesDescription=description,
    )


def test_series_of_a_study_matching_the_rule_become_one_two_channel_case(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    write_study_series(scans / "s1" / "t1", 0, study="1", description="AX T1 MPRAGE")
    write_study_series(scans / "s1" / "t2", 0, study="1", description="ax t2 flair")
    write_study_series(scans / "s1" / "loc", 2, study="1", description="localizer")
    write_study_series(scans / "s2" / "t1", 3, study="2", description="T1 only")
    write_study_series(scans / "s3" / "t1", 0, study="3", description="t1")
    write_study_series(
        scans / "s3" / "t2", 4, study="3", description="t2"
    )  # another patient position
    (tmp_path / "rule.yaml").write_text(RULE)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["ingest", str(scans), "--out", str(out), "--channels", str(tmp_path / "rule.yaml")],
    )
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    manifest = read_manifest(out / "manifest.jsonl")
    records = {record.shape[-1] if len(record.shape) == 4 else 1: record for record in manifest}
    assert len(manifest) == 2 and sorted(records) == [1, 2]
    two = records[2]
    assert two.extra["channel_names"] == ["T1", "T2"] and two.shape[:3] == [49, 39, 33]
    stacked = read_nifti(out / two.image)
    ct, _ = small_phantom(0)  # both channels: phantom 0 on the same grid
    for number in range(2):
        assert np.array_equal(stacked.array[..., number], ct.array)
    assert np.allclose(stacked.affine_ras, ct.affine_ras, atol=1e-4)
    single = records[1]  # the localizer stays a case of its own
    assert "channel_names" not in single.extra
    report = (out / "ingest_report.json").read_text()
    assert json.loads(report)["counts"] == {"converted": 2, "failed": 2}
    assert (
        "the channel rule needs one series per channel in the study; "
        "found T1 ('*t1*'): 1, T2 ('*t2*'): 0"
    ) in report
    assert "(T2): not co-registered with series " in report
    assert "(T1): affine differs from channel 0's by up to " in report
