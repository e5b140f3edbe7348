"""The pipeline's ``ingest`` stage with a DICOM channel rule (``channels:``): the series of a
study become one 4D case, and the rule's content is part of the stage's fingerprint."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.io.nifti import read_nifti
from medseg.manifest import read_manifest
from medseg.pipeline.runner import PipelineReport, RunSelection, run_pipeline
from medseg.pipeline.spec import load_pipeline
from tests.phantoms import small_phantom
from tests.test_ingest_channels import RULE, write_study_series

PIPELINE = """
name: channels
experiment: channels-pipeline
data_root: data
config_root: .
stages:
  - {stage: ingest, input: scans, case_ids: folder, workers: 1, channels: rules/mr.yaml}
"""


def _run(project: Path) -> PipelineReport:
    return run_pipeline(
        load_pipeline(project / "channels.yaml"),
        work_dir=project / "work",
        selection=RunSelection(),
        tracking=f"sqlite:///{project / 'mlflow.db'}",
    )


def test_an_ingest_stage_with_a_channel_rule_writes_four_dimensional_cases(
    tmp_path: Path,
) -> None:
    scans = tmp_path / "data" / "scans"
    write_study_series(scans / "s1" / "t1", 0, study="1", description="AX T1 MPRAGE")
    write_study_series(scans / "s1" / "t2", 0, study="1", description="ax t2 flair")
    write_study_series(scans / "s2" / "ct", 1, study="2", description="abdomen")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "mr.yaml").write_text(RULE)
    (tmp_path / "channels.yaml").write_text(PIPELINE)

    first = _run(tmp_path)
    assert first.exit_code == 0, [(r.stage, r.error, r.problems) for r in first.records]
    manifest_path = first.provided("manifest")
    records = {len(r.shape): r for r in read_manifest(manifest_path)}
    assert sorted(records) == [3, 4]
    case = records[4]
    assert case.shape == [49, 39, 33, 2] and case.extra["channel_names"] == ["T1", "T2"]
    stacked = read_nifti(manifest_path.parent / case.image)
    ct, _ = small_phantom(0)
    for number in range(2):
        assert np.array_equal(stacked.array[..., number], ct.array)
    assert "channel_names" not in records[3].extra

    assert _run(tmp_path).skipped == ["ingest"]  # same rule: nothing to do
    (tmp_path / "rules" / "mr.yaml").write_text(RULE.replace("T1,", "MPRAGE,"))
    again = _run(tmp_path)
    assert again.skipped == [] and again.exit_code == 0
    (four,) = [r for r in read_manifest(again.provided("manifest")) if len(r.shape) == 4]
    assert four.extra["channel_names"] == ["MPRAGE", "T2"]
