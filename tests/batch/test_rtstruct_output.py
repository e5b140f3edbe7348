"""``--rtstruct``: an RT Structure Set beside the SEG for DICOM inputs, from ``medseg batch``
and ``medseg predict``, which reads back to the label map written; a warning for others."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from medseg.cli import app
from medseg.io.dicom.rtstruct import read_rtstruct
from medseg.io.nifti import read_nifti
from tests.batch.conftest import BatchModel, batch_command, predict_command
from tests.batch.trees import ScanTree

MIN_DICE = 0.95


def _check_rtstruct(folder: Path, case_id: str, source_files: list[Path]) -> None:
    labels = read_nifti(folder / f"{case_id}.nii.gz")
    rtstruct = pydicom.dcmread(folder / f"{case_id}_rtstruct.dcm")
    source = pydicom.dcmread(source_files[0], stop_before_pixels=True)
    assert rtstruct.Modality == "RTSTRUCT"
    series = rtstruct.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    assert series.RTReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    read = read_rtstruct(folder / f"{case_id}_rtstruct.dcm", labels)
    present = sorted(int(v) for v in np.unique(labels.array) if v > 0)
    assert present, "the model found no structure"
    assert sorted(read.names) == present
    for value in present:
        expected, got = labels.array == value, read.labels.array == value
        assert 2 * (expected & got).sum() / (expected.sum() + got.sum()) >= MIN_DICE


def test_batch_and_predict_write_an_rtstruct_for_dicom_inputs_only(
    batch_model: BatchModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tree = ScanTree(tmp_path / "scans")
    source_files = tree.dicom("series", 3)
    tree.nifti("a.nii.gz", 0)
    out = tmp_path / "batch"
    options = ("--case-ids", "folder", "--rtstruct")
    result = CliRunner().invoke(app, batch_command(tree.root, batch_model, out, *options))
    assert result.exit_code == 0, result.output
    _check_rtstruct(out / "series", "series", source_files)
    assert (
        "series_rtstruct.dcm" in json.loads((out / "series" / "result.json").read_text())["outputs"]
    )
    assert not list((out / "a").glob("*rtstruct*"))

    predicted = tmp_path / "predict"
    options = ("--case-ids", "folder", "--rtstruct")
    command = predict_command(tree.root / "series", batch_model, predicted, *options)
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    _check_rtstruct(predicted, "series", source_files)
    with caplog.at_level(logging.WARNING, logger="medseg"):
        command = predict_command(tree.root / "a.nii.gz", batch_model, predicted, *options)
        result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "a.nii.gz: not a DICOM series: no RTSTRUCT written" in caplog.text
    assert not list(predicted.glob("a_rtstruct*"))
