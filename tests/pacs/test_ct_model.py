"""The CT model trained in the test segments the CT it was trained on, read from DICOM."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from medseg.infer.predictor import PredictionOptions, load_packaged_model
from medseg.infer.stage import predict_path
from medseg.io.dicom import read_dicom_series
from medseg.io.nifti import read_nifti
from medseg.metrics import confusion_matrix, dice_from_confusion
from tests.pacs.ct_model import train_ct_model
from tests.real_ct import EXAMPLE_CT, with_restored_uids

MODEL_NAME = "pacs-ct"


def test_trained_ct_model_segments_the_dicom_series(shared_data: Path, tmp_path: Path) -> None:
    start = time.perf_counter()
    model = train_ct_model(shared_data, tmp_path / "model", registered_model_name=MODEL_NAME)
    trained = time.perf_counter() - start
    assert model.model_uri == f"models:/{MODEL_NAME}/1"
    assert model.label_names == {0: "background", 1: "liver", 2: "spleen", 3: "stomach"}
    # as medseg batch gets it: by alias from the registry, a series with other UIDs
    champion = f"models:/{MODEL_NAME}@champion"
    assert model.champion_uri == champion
    packaged = load_packaged_model(champion, tracking_uri=model.tracking_uri)
    assert packaged.label_names == model.label_names
    series = tmp_path / "series"
    with_restored_uids(shared_data / EXAMPLE_CT, series / "ct", seed="other")
    report = predict_path(
        series, packaged, out_dir=tmp_path / "out", options=PredictionOptions(), case_ids="folder"
    )
    assert report.exit_code == 0, report.outcomes
    assert (tmp_path / "out" / "ct_seg.dcm").is_file()

    prediction = read_nifti(tmp_path / "out" / "ct.nii.gz")
    assert prediction.same_grid(read_dicom_series(series / "ct", workers=1))
    assert prediction.same_grid(model.reference)
    dice = dice_from_confusion(confusion_matrix(prediction.array, model.reference.array, 4))[1:]
    total = time.perf_counter() - start
    print(
        f"Dice {np.round(dice, 3)}, trained in {trained:.1f} s, test {total:.1f} s", model.seconds
    )
    assert np.all(dice >= 0.6), dice
    assert dice.mean() >= 0.8, dice
