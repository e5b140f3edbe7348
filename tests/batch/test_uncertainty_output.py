"""``--uncertainty``: the voxel-wise normalised entropy on the scan's grid, from ``medseg batch``
and ``medseg predict``; refused beside ``--structures``."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from typer.testing import CliRunner

from medseg.cli import app
from medseg.io.nifti import read_nifti
from tests.batch.conftest import BatchModel, batch_command, predict_command
from tests.batch.trees import ScanTree


def _check_uncertainty(path: Path, labels_path: Path) -> None:
    image = nib.load(path)
    assert image.get_data_dtype() == np.uint8
    assert image.dataobj.slope == np.float32(1 / 255) and image.dataobj.inter == 0
    entropy = read_nifti(path)  # the slope applied: floats in [0, 1]
    labels = read_nifti(labels_path)
    assert entropy.same_grid(labels)
    values = np.asarray(entropy.array, np.float64)
    assert values.min() >= 0 and values.max() <= 1
    # the argmax changes where two classes cross: the networks are less sure there than
    # where a voxel's neighbours all share its label
    label_array = np.asarray(labels.array)
    edges = np.zeros(label_array.shape, bool)
    for axis in range(3):
        edges |= np.diff(label_array, axis=axis, prepend=label_array.take([0], axis=axis)) != 0
    edges = ndimage.binary_dilation(edges, iterations=1)
    assert edges.any() and (~edges).any()
    assert values[edges].mean() > values[~edges].mean() + 0.05, (
        values[edges].mean(),
        values[~edges].mean(),
    )


def test_batch_and_predict_write_the_uncertainty_map(
    batch_model: BatchModel, tmp_path: Path
) -> None:
    tree = ScanTree(tmp_path / "scans")
    tree.nifti("a.nii.gz", 0)
    out = tmp_path / "batch"
    options = ("--case-ids", "folder", "--uncertainty")
    result = CliRunner().invoke(app, batch_command(tree.root, batch_model, out, *options))
    assert result.exit_code == 0, result.output
    _check_uncertainty(out / "a" / "a.uncertainty.nii.gz", out / "a" / "a.nii.gz")
    assert "a.uncertainty.nii.gz" in json.loads((out / "a" / "result.json").read_text())["outputs"]

    predicted = tmp_path / "predict"
    common = predict_command(tree.root / "a.nii.gz", batch_model, predicted, "--case-ids", "folder")
    result = CliRunner().invoke(app, [*common, "--uncertainty"])
    assert result.exit_code == 0, result.output
    _check_uncertainty(predicted / "a.uncertainty.nii.gz", predicted / "a.nii.gz")
    result = CliRunner().invoke(app, common)  # again without: the map goes with the old case
    assert result.exit_code == 0, result.output
    assert not (predicted / "a.uncertainty.nii.gz").exists()


def test_the_uncertainty_map_is_refused_beside_structures(
    batch_model: BatchModel, tmp_path: Path
) -> None:
    tree = ScanTree(tmp_path / "scans")
    tree.nifti("a.nii.gz", 0)
    common = ["--model", batch_model.uri, "--tracking-uri", batch_model.tracking_uri]
    for command in (
        ["predict", str(tree.root / "a.nii.gz"), *common, "--out", str(tmp_path / "p")],
        ["batch", str(tree.root), *common, "--out", str(tmp_path / "b")],
    ):
        result = CliRunner().invoke(app, [*command, "--uncertainty", "--structures", "liver"])
        assert result.exit_code == 2, result.output
        assert "--uncertainty need every class" in " ".join(result.output.split())
        assert not (tmp_path / "p").exists() and not (tmp_path / "b").exists()
