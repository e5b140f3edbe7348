"""The prediction options are one declaration (``medseg.infer.options.PredictionOptions``):
``predict``, ``batch`` and the pipeline's predict stage take the same ones, with the same
effect. Here ``keep_largest``, which only ``predict`` had before."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from medseg.cli import app
from medseg.infer.options import PredictionOptions
from medseg.io.nifti import read_nifti
from medseg.pipeline.runner import run_pipeline
from medseg.pipeline.spec import load_pipeline
from tests.batch.conftest import BatchModel, batch_command
from tests.phantoms import write_phantom_nifti

CASE = "phantom"


def _components(labels: np.ndarray) -> int:
    return sum(ndimage.label(labels == value)[1] for value in np.unique(labels) if value > 0)


def _predict(scans: Path, model: BatchModel, out: Path, *options: str) -> np.ndarray:
    arguments = ["predict", str(scans), "--model", model.uri, "--out", str(out)]
    arguments += ["--tracking-uri", model.tracking_uri, "--case-ids", "folder", *options]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    return read_nifti(out / f"{CASE}.nii.gz").array


def _batch(scans: Path, model: BatchModel, out: Path, *options: str) -> np.ndarray:
    arguments = batch_command(scans, model, out, "--case-ids", "folder", *options)
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    return read_nifti(out / CASE / f"{CASE}.nii.gz").array


def _pipeline_predict(scans: Path, model: BatchModel, work: Path, keep_largest: str) -> np.ndarray:
    path = work / "predict.yaml"
    work.mkdir()
    path.write_text(
        f"name: keep\nstages:\n  - stage: predict\n    input: {scans.name}\n"
        f"    model: {model.uri}\n    case_ids: folder\n    keep_largest: {keep_largest}\n"
    )
    report = run_pipeline(
        load_pipeline(path),
        work_dir=work / "run",
        data_root=scans.parent,
        tracking=model.tracking_uri,
    )
    assert report.exit_code == 0, report.failed_stage
    return read_nifti(work / "run/predict/predictions" / CASE / f"{CASE}.nii.gz").array


def test_keep_largest_has_the_same_effect_in_predict_batch_and_the_pipeline(
    batch_model: BatchModel, tmp_path: Path
) -> None:
    scans = tmp_path / "scans"
    write_phantom_nifti(scans / f"{CASE}.nii.gz")
    plain = _predict(scans, batch_model, tmp_path / "plain")
    kept = _predict(scans, batch_model, tmp_path / "predict", "--keep-largest", "all")
    # the untrained network leaves islands: keeping the largest component changes the map
    assert _components(kept) < _components(plain)
    assert np.array_equal(
        _batch(scans, batch_model, tmp_path / "batch", "--keep-largest", "all"), kept
    )
    assert np.array_equal(_pipeline_predict(scans, batch_model, tmp_path / "pipe", "all"), kept)


def test_batch_refuses_a_structure_the_model_lacks_before_any_scan(
    batch_model: BatchModel, tmp_path: Path
) -> None:
    scans = tmp_path / "scans"
    write_phantom_nifti(scans / f"{CASE}.nii.gz")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, batch_command(scans, batch_model, out, "--keep-largest", "9"))
    assert result.exit_code == 2
    assert "keep_largest: the model has no structure [9]" in result.output
    assert not (out / CASE).exists()


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (
            {"backend": "torch", "precision": "bf16"},
            "precision bf16 needs backend openvino (not torch)",
        ),
        ({"backend": "tensorrt"}, "backend"),
        ({"keep_largest": "1,x"}, "keep_largest"),
        ({"keep_largest": [0]}, "keep_largest"),
    ],
)
def test_prediction_options_refuse_what_cannot_run(options: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        PredictionOptions.model_validate(options)


def test_prediction_options_take_the_command_line_and_yaml_forms() -> None:
    assert PredictionOptions(keep_largest="1,3").keep_largest == [1, 3]
    assert PredictionOptions(keep_largest="all").kept_structures({0: "bg", 1: "a", 2: "b"}) == [
        1,
        2,
    ]
    assert PredictionOptions(crf=True).crf is not None and PredictionOptions(crf=False).crf is None
    assert PredictionOptions(backend="openvino", precision="bf16").precision.value == "bf16"
