"""``predict_path`` on a mixed folder: NIfTI, DICOM (with a DICOM SEG) and a broken scan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.infer.options import PredictionOptions
from medseg.infer.outputs import ScanOutputs
from medseg.infer.postprocess import keep_largest_component
from medseg.infer.predictor import load_packaged_model
from medseg.infer.stage import predict_path
from medseg.io.nifti import read_nifti
from medseg.tracking.runs import RunTracker
from tests.packaged_model import build_packaged_model
from tests.phantoms import small_phantom, write_phantom_dicom, write_phantom_nifti
from tests.tiny_dataset import TinyDataset


@pytest.fixture(scope="module")
def packaged_model_uri(
    tiny_dataset: TinyDataset, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    return build_packaged_model(tiny_dataset.plan, tmp_path_factory.mktemp("mlflow"))


def test_mixed_folder_gives_outputs_per_scan_and_reports_the_broken_one(
    tmp_path: Path, packaged_model_uri: tuple[str, str]
) -> None:
    model_uri, tracking = packaged_model_uri
    scans = tmp_path / "scans"
    (scans / "nifti").mkdir(parents=True)
    write_phantom_nifti(scans / "nifti/case_a.nii.gz", seed=20)
    ct, _ = small_phantom(20)
    write_phantom_dicom(scans / "case_b", seed=21)
    (scans / "broken.nii.gz").write_bytes(b"not a nifti at all")
    model = load_packaged_model(model_uri, tracking_uri=tracking)
    report = predict_path(
        scans,
        model,
        out_dir=tmp_path / "out",
        options=PredictionOptions(),
        case_ids="folder",
        outputs=ScanOutputs(probabilities=True),
    )
    outcomes = {o.case_id: o for o in report.outcomes}
    assert report.exit_code == 1
    assert not outcomes["broken"].ok and "broken.nii.gz" in outcomes["broken"].reason
    assert outcomes["case_a"].ok and outcomes["case_b"].ok
    labels_a = read_nifti(tmp_path / "out/case_a.nii.gz")
    assert labels_a.same_grid(ct)
    saved = np.load(tmp_path / "out/case_a.probabilities.npz")
    probabilities = saved["probabilities"].astype(np.float32)
    assert probabilities.shape == (model.num_classes, *ct.shape)  # phantom files: RAS order
    assert model.num_classes == 6
    assert np.allclose(probabilities.sum(0), 1.0, atol=1e-2)
    agreement = (probabilities.argmax(0) == labels_a.array).mean()
    assert agreement > 0.999  # float16 storage may flip exact near-ties
    seg = pydicom.dcmread(tmp_path / "out/case_b_seg.dcm")
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    source = pydicom.dcmread(next((scans / "case_b").iterdir()), stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID


def test_keep_largest_component_removes_the_smaller_islands() -> None:
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:8, 2:8, 2:8] = 1  # big island
    labels[15:17, 15:17, 15:17] = 1  # small island
    labels[10:12, 10:12, 10:12] = 2  # untouched structure
    cleaned = keep_largest_component(labels, [1])
    assert int((cleaned == 1).sum()) == 216 and int((cleaned == 2).sum()) == 8


def test_evaluation_is_logged_into_an_mlflow_run(tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from medseg.cli import app

    references = tmp_path / "labels"
    references.mkdir()
    for seed in (1, 3):
        write_phantom_nifti(
            tmp_path / f"image_{seed}.nii.gz",
            seed,
            label_path=references / f"phantom_{seed:03d}.nii.gz",
        )
    (tmp_path / "pred").mkdir()
    label = references / "phantom_001.nii.gz"
    (tmp_path / "pred/phantom_001.nii.gz").write_bytes(label.read_bytes())
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with RunTracker(tracking_uri=uri).start(experiment="eval", run_name="e", tags={}) as run:
        run_id = run.run_id
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(tmp_path / "pred"),
            str(label.parent),
            "--out",
            str(tmp_path / "report"),
            "--run-id",
            run_id,
            "--tracking-uri",
            uri,
        ],
    )
    assert result.exit_code == 1  # every other label file has no prediction: reported
    metrics = MlflowClient(tracking_uri=uri).get_run(run_id).data.metrics
    assert metrics["eval_mean_dice"] == 1.0
    assert [metrics[f"eval_dice_label_{value}"] for value in range(1, 6)] == [1.0] * 5
    summary = (tmp_path / "report/summary.json").read_text()
    assert "phantom_003" in summary  # listed under missing_prediction
