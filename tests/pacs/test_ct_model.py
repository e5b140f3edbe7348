"""The CT model trained in the test segments the CT it was trained on, read from DICOM.

On the phantom CT; the reference test does the same on TotalSegmentator's real CT from
../shared/data.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from medseg.evaluate.metrics import confusion_matrix, dice_from_confusion
from medseg.infer.options import PredictionOptions
from medseg.infer.predictor import load_packaged_model
from medseg.infer.stage import predict_path
from medseg.io.dicom import read_dicom_series
from medseg.io.nifti import read_nifti
from tests.pacs.ct_model import (
    TrainingScan,
    copy_with_new_uids,
    phantom_scan,
    real_ct_scan,
    train_ct_model,
)

MODEL_NAME = "pacs-ct"


def _assert_segments_its_series(
    scan: TrainingScan, folder: Path, *, min_dice: float, min_mean_dice: float
) -> None:
    start = time.perf_counter()
    model = train_ct_model(scan, folder / "model", registered_model_name=MODEL_NAME)
    trained = time.perf_counter() - start
    assert model.model_uri == f"models:/{MODEL_NAME}/1"
    assert model.label_names == scan.label_names
    # as medseg batch gets it: by alias from the registry, a series with other UIDs
    champion = f"models:/{MODEL_NAME}@champion"
    assert model.champion_uri == champion
    packaged = load_packaged_model(champion, tracking_uri=model.tracking_uri)
    assert packaged.label_names == model.label_names
    series = folder / "series"
    copy_with_new_uids(scan.series_dir, series / "ct", seed="other")
    out = folder / "out"
    report = predict_path(series, packaged, out_dir=out, options=PredictionOptions())
    assert report.exit_code == 0, report.outcomes
    [prediction_path] = out.glob("*.nii.gz")
    assert sorted(p.name for p in out.glob("*_seg.dcm")) == [
        prediction_path.name.replace(".nii.gz", "_seg.dcm")
    ]

    prediction = read_nifti(prediction_path)
    assert prediction.same_grid(read_dicom_series(series / "ct", workers=1))
    assert prediction.same_grid(model.reference)
    classes = len(model.label_names)
    dice = dice_from_confusion(confusion_matrix(prediction.array, model.reference.array, classes))
    total = time.perf_counter() - start
    print(
        f"Dice {np.round(dice[1:], 3)}, trained in {trained:.1f} s, test {total:.1f} s",
        model.seconds,
    )
    assert np.all(dice[1:] >= min_dice), dice
    assert dice[1:].mean() >= min_mean_dice, dice


def test_trained_ct_model_segments_the_dicom_series(tmp_path: Path) -> None:
    scan = phantom_scan(tmp_path / "scan")
    assert scan.label_names == {
        0: "background",
        1: "liver",
        2: "kidney_left",
        3: "kidney_right",
        4: "spine",
    }
    _assert_segments_its_series(scan, tmp_path, min_dice=0.9, min_mean_dice=0.95)


# --- reference data (../shared/data) ---------------------------------------------------------


def test_model_trained_on_the_real_ct_segments_its_dicom_series(
    shared_data: Path, tmp_path: Path
) -> None:
    scan = real_ct_scan(shared_data, tmp_path / "scan")
    assert scan.label_names == {0: "background", 1: "liver", 2: "spleen", 3: "stomach"}
    _assert_segments_its_series(scan, tmp_path, min_dice=0.6, min_mean_dice=0.8)
