"""Predict on NRRD and MetaImage scans, and ``predict --output-format``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medseg.cli import app
from medseg.demo.phantom import make_phantom
from medseg.infer.predictor import PredictionOptions, load_packaged_model
from medseg.infer.stage import predict_path
from medseg.io.formats import read_volume, write_volume
from medseg.io.nifti import read_nifti, write_nifti
from tests.packaged_model import build_packaged_model
from tests.tiny_dataset import TinyDataset


@pytest.fixture(scope="module")
def packaged_model_uri(
    tiny_dataset: TinyDataset, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    return build_packaged_model(tiny_dataset.plan, tmp_path_factory.mktemp("mlflow"))


@pytest.fixture(scope="module")
def oblique_scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A phantom on an oblique grid stored in ASL order, as NIfTI."""
    ct, _ = make_phantom(
        seed=22, spacing_mm=(3.0, 3.2, 4.0), orientation="ASL", rotation_deg=(3, 0, -5)
    )
    return write_nifti(ct, tmp_path_factory.mktemp("scan") / "scan.nii.gz")


def test_the_same_scan_as_nifti_nrrd_and_mha_gets_the_same_prediction(
    tmp_path: Path, packaged_model_uri: tuple[str, str], oblique_scan: Path
) -> None:
    model_uri, tracking = packaged_model_uri
    scans = tmp_path / "scans"
    scan = read_nifti(oblique_scan)  # the NIfTI's float32 affine, written again exactly
    write_nifti(scan, scans / "as_nifti.nii.gz")
    write_volume(scan, scans / "as_mha.mha")
    write_volume(scan, scans / "as_nrrd.nhdr")
    model = load_packaged_model(model_uri, tracking_uri=tracking)
    report = predict_path(
        scans, model, out_dir=tmp_path / "out", options=PredictionOptions(), case_ids="folder"
    )
    assert report.exit_code == 0 and len(report.outcomes) == 3
    expected = read_nifti(tmp_path / "out/as_nifti.nii.gz")
    assert len(np.unique(expected.array)) > 1  # untrained, but not constant
    assert expected.same_grid(scan.to_closest_ras(), atol_mm=1e-6)  # the scan's grid
    for name in ("as_mha", "as_nrrd"):
        labels = read_nifti(tmp_path / f"out/{name}.nii.gz")
        np.testing.assert_array_equal(labels.array, expected.array)
        np.testing.assert_array_equal(labels.affine_ras, expected.affine_ras)


def _predict(args: list[str], model: tuple[str, str]) -> int:
    model_uri, tracking = model
    command = ["predict", *args, "--model", model_uri, "--tracking-uri", tracking]
    result = CliRunner().invoke(app, command)
    return result.exit_code


@pytest.mark.parametrize("output_format", ["nrrd", "mha"])
def test_output_format_writes_the_label_map_in_that_format_on_the_scans_grid(
    tmp_path: Path, packaged_model_uri: tuple[str, str], oblique_scan: Path, output_format: str
) -> None:
    case = ["--case-ids", "folder"]
    assert (
        _predict([str(oblique_scan), "--out", str(tmp_path / "nifti"), *case], packaged_model_uri)
        == 0
    )
    default = read_nifti(tmp_path / "nifti/scan.nii.gz")
    out = tmp_path / "other"
    args = [str(oblique_scan), "--out", str(out), *case, "--output-format", output_format]
    assert _predict(args, packaged_model_uri) == 0
    written = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert f"scan.{output_format}" in written and "scan.nii.gz" not in written
    labels = read_volume(out / f"scan.{output_format}")
    assert labels.metadata["source_format"] == output_format
    assert labels.array.dtype == default.array.dtype
    np.testing.assert_array_equal(labels.array, default.array)
    np.testing.assert_allclose(labels.affine_ras, default.affine_ras, atol=1e-5)
    # Again in NIfTI into the same folder: the earlier run's label map of the case goes.
    assert _predict([str(oblique_scan), "--out", str(out), *case], packaged_model_uri) == 0
    assert (out / "scan.nii.gz").exists() and not (out / f"scan.{output_format}").exists()


def test_an_unknown_output_format_is_a_usage_error(tmp_path: Path, oblique_scan: Path) -> None:
    command = ["predict", str(oblique_scan), "--model", str(tmp_path / "none"), "--out"]
    result = CliRunner().invoke(app, [*command, str(tmp_path / "out"), "--output-format", "dcm"])
    assert result.exit_code == 2
    assert "unknown volume format 'dcm'; known: mha, nifti, nrrd" in result.output
    assert not (tmp_path / "out").exists()
