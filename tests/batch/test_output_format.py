"""``batch --output-format`` and the pipeline predict stage's ``output_format``: label maps in
NRRD or MetaImage, equal to the NIfTI ones; resuming and rerunning a batch in another format;
the evaluate stage scoring predictions written as NRRD."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medseg.batch.runner import BatchSettings, run_batch
from medseg.cli import app
from medseg.infer.outputs import ScanOutputs
from medseg.ingest.case_ids import CaseIdScheme
from medseg.io.formats import read_volume
from medseg.pipeline.runner import run_pipeline
from medseg.pipeline.spec import load_pipeline
from tests.batch.conftest import BatchModel, batch_command
from tests.batch.trees import ScanTree
from tests.tiny_dataset import write_tiny_dataset


def _case_files(out: Path) -> dict[str, list[str]]:
    return {
        folder.name: sorted(p.name for p in folder.iterdir())
        for folder in sorted(out.iterdir())
        if folder.is_dir() and not folder.name.startswith(".")
    }


@pytest.fixture
def tree(tmp_path: Path) -> ScanTree:
    """Two NIfTI phantoms and a DICOM series (which also gets a DICOM SEG)."""
    tree = ScanTree(tmp_path / "scans")
    tree.nifti("a.nii.gz", 0)
    tree.nifti("b.nii.gz", 1)
    tree.dicom("c", 2)
    return tree


@pytest.mark.slow  # minutes of commands: the serial slow suite, so make test stays < 15 min
def test_batch_writes_metaimage_label_maps_equal_to_the_nifti_ones_and_resumes(
    batch_model: BatchModel, tree: ScanTree, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = ("--case-ids", "folder", "--workers", "2")
    nifti, mha = tmp_path / "nifti", tmp_path / "mha"
    for out, options in ((nifti, ()), (mha, ("--output-format", "mha"))):
        result = CliRunner().invoke(
            app, batch_command(tree.root, batch_model, out, *folder, *options)
        )
        assert result.exit_code == 0, result.output
    files = _case_files(mha)
    assert files == {
        "a": ["a.mha", "a.volumes.json", "result.json"],
        "b": ["b.mha", "b.volumes.json", "result.json"],
        "c": ["c.mha", "c.volumes.json", "c_seg.dcm", "result.json"],
    }
    for case in files:
        expected = read_volume(nifti / case / f"{case}.nii.gz")
        labels = read_volume(mha / case / f"{case}.mha")
        np.testing.assert_array_equal(labels.array, expected.array)
        np.testing.assert_allclose(labels.affine_ras, expected.affine_ras, atol=1e-5)
        result = json.loads((mha / case / "result.json").read_text())
        assert f"{case}.mha" in result["outputs"]
        assert json.loads((nifti / case / f"{case}.volumes.json").read_text()) == json.loads(
            (mha / case / f"{case}.volumes.json").read_text()
        )

    # The same command again: every scan is complete, nothing is written.
    stamps = {p: p.stat().st_mtime_ns for p in mha.rglob("*") if p.parent.name in files}
    settings = BatchSettings(
        case_ids=CaseIdScheme.FOLDER,
        outputs=ScanOutputs(output_format="mha"),
        tracking_uri=batch_model.tracking_uri,
    )
    with caplog.at_level(logging.WARNING, logger="medseg.batch.runner"):
        report = run_batch(tree.root, batch_model.uri, mha, settings=settings)
    assert report.done == [] and sorted(report.skipped) == ["a", "b", "c"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert "another format" not in caplog.text

    # In another format: complete scans are kept (and said so); --force replaces each folder,
    # so no scan keeps label maps in two formats.
    nrrd = BatchSettings(
        case_ids=CaseIdScheme.FOLDER,
        outputs=ScanOutputs(output_format="nrrd"),
        tracking_uri=batch_model.tracking_uri,
    )
    with caplog.at_level(logging.WARNING, logger="medseg.batch.runner"):
        report = run_batch(tree.root, batch_model.uri, mha, settings=nrrd)
    assert (
        report.done == [] and "3 complete scans" in caplog.text and "another format" in caplog.text
    )
    forced = BatchSettings(
        case_ids=CaseIdScheme.FOLDER,
        outputs=ScanOutputs(output_format="nrrd"),
        force=True,
        tracking_uri=batch_model.tracking_uri,
    )
    report = run_batch(tree.root, batch_model.uri, mha, settings=forced)
    assert sorted(r.case_id for r in report.done) == ["a", "b", "c"]
    files = _case_files(mha)
    assert [name for name in files["a"] if name.startswith("a.") and "json" not in name] == [
        "a.nrrd"
    ]
    for case in files:
        expected = read_volume(nifti / case / f"{case}.nii.gz")
        np.testing.assert_array_equal(
            read_volume(mha / case / f"{case}.nrrd").array, expected.array
        )


def test_batch_refuses_an_unknown_output_format(batch_model: BatchModel, tmp_path: Path) -> None:
    scans = ScanTree(tmp_path / "scans")
    scans.nifti("a.nii.gz", 0)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, batch_command(scans.root, batch_model, out, "--output-format", "dcm")
    )
    assert result.exit_code == 2
    assert "unknown volume format 'dcm'; known: mha, nifti, nrrd" in result.output
    assert not out.exists()


PIPELINE = """
name: formats
data_root: data
stages:
  - {{stage: import-dataset, name: dataset, dataset: phantoms, val_fraction: 0.4}}
  - {{stage: predict, split: val, model: "{model}", output_format: nrrd}}
  - {{stage: evaluate, split: val}}
"""


def test_a_pipeline_predicts_nrrd_label_maps_and_evaluates_them(
    batch_model: BatchModel, tmp_path: Path
) -> None:
    write_tiny_dataset(tmp_path / "data" / "phantoms")
    path = tmp_path / "formats.yaml"
    path.write_text(PIPELINE.format(model=batch_model.uri))
    report = run_pipeline(
        load_pipeline(path), work_dir=tmp_path / "work", tracking=batch_model.tracking_uri
    )
    assert report.exit_code == 0, report.failed_stage
    predictions = tmp_path / "work/predict/predictions"
    cases = sorted(p.name for p in predictions.iterdir() if not p.name.startswith("."))
    cases = [case for case in cases if (predictions / case).is_dir()]
    assert len(cases) == 2
    for case in cases:
        assert sorted(p.name for p in (predictions / case).glob(f"{case}.*")) == [
            f"{case}.nrrd",
            f"{case}.volumes.json",
        ]
    report_folder = tmp_path / "work/evaluate/report"
    result = json.loads((report_folder / "summary.json").read_text())
    assert result["cases"] == 2 and result["mean"]["dice"] is not None
    assert result["failed"] == {} and result["missing_prediction"] == []
    scored = {line.split(",")[0] for line in (report_folder / "metrics.csv").read_text().split()}
    assert scored - {"case_id"} == set(cases)


def test_the_pipeline_refuses_an_unknown_output_format(tmp_path: Path) -> None:
    from medseg.pipeline.stages.apply import PredictStageOptions

    with pytest.raises(ValueError, match="unknown volume format 'dcm'"):
        PredictStageOptions(input="scans", output_format="dcm")
    assert PredictStageOptions(input="scans", output_format="MHA").output_format == "mha"
