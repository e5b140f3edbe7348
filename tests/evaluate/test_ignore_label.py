"""The ignore label in evaluation: reference voxels of that value count in no Dice or IoU, are
counted per case, and are no structure of the report; a non-highest ignore label is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.errors import IgnoreLabelError
from medseg.evaluate.metrics import confusion_matrix, dice_from_confusion, iou_from_confusion
from medseg.evaluate.pairing import pair_label_maps
from medseg.evaluate.stage import evaluate_pairing
from medseg.io.nifti import write_nifti
from medseg.volume import Volume
from tests.faults.test_cli_errors import run_cli

NAMES = {0: "background", 1: "liver", 2: "spleen", 3: "ignore"}


def test_hand_counted_confusion_leaves_the_ignored_reference_voxels_out() -> None:
    reference = np.array([0, 0, 1, 1, 3, 3, 2, 3])
    prediction = np.array([0, 1, 1, 0, 1, 2, 2, 0])
    matrix = confusion_matrix(prediction, reference, 3, ignore_label=3)
    # kept: reference 0 0 1 1 2 against prediction 0 1 1 0 2
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [1, 1, 0], [0, 0, 1]])
    dice, iou = dice_from_confusion(matrix), iou_from_confusion(matrix)
    assert dice[1] == pytest.approx(0.5) and dice[2] == 1.0
    assert iou[1] == pytest.approx(1 / 3) and iou[2] == 1.0
    # counted as background instead, the ignored voxels would cost spleen and liver
    unmasked = dice_from_confusion(
        confusion_matrix(prediction, np.where(reference == 3, 0, reference), 3)
    )
    assert unmasked[1] == pytest.approx(2 / 5) and unmasked[2] == pytest.approx(2 / 3)


def _write(path: Path, array: np.ndarray) -> Path:
    return write_nifti(Volume(array.astype(np.uint8), np.diag([2.0, 2.0, 3.0, 1.0])), path)


@pytest.fixture
def partial_case(tmp_path: Path) -> Path:
    """A reference with the liver cube annotated in its first half only, the rest ignored, and
    a prediction with the whole liver cube plus a spleen blob inside the ignored half."""
    reference = np.zeros((20, 20, 20), np.uint8)
    reference[2:10, 2:10, 2:10] = 1
    reference[:, :, 6:] = 3  # slices 6.. are not annotated
    prediction = np.zeros_like(reference)
    prediction[2:10, 2:10, 2:10] = 1
    prediction[12:16, 12:16, 12:16] = 2
    _write(tmp_path / "ref" / "case.nii.gz", reference)
    _write(tmp_path / "pred" / "case.nii.gz", prediction)
    return tmp_path


def test_evaluation_scores_only_the_annotated_voxels_and_counts_the_others(
    partial_case: Path,
) -> None:
    pairing = pair_label_maps(partial_case / "pred", partial_case / "ref")
    report = evaluate_pairing(pairing, label_names=NAMES)
    assert report.label_names == {0: "background", 1: "liver", 2: "spleen"}
    assert report.ignore_label == 3
    (case,) = report.cases
    assert case.ignored_voxels == 20 * 20 * 14
    # liver: 8 x 8 x 4 annotated voxels, all predicted; the rest of the cube is ignored
    assert case.metrics["liver"]["dice"] == 1.0 and case.metrics["liver"]["iou"] == 1.0
    # the spleen blob lies in the ignored half: absent from the scored voxels on both sides
    assert np.isnan(case.metrics["spleen"]["dice"])
    # volumes as they are: the reference liver is its annotated part (256 voxels of 12 ml)
    assert case.metrics["liver"]["volume_reference_ml"] == pytest.approx(256 * 12 / 1000)
    assert case.metrics["liver"]["volume_prediction_ml"] == pytest.approx(512 * 12 / 1000)


def test_medseg_evaluate_reports_the_ignored_voxels(partial_case: Path) -> None:
    dataset_json = partial_case / "dataset.json"
    dataset_json.write_text(json.dumps({"labels": {v: k for k, v in NAMES.items()}}))
    out = partial_case / "report"
    result = run_cli(
        "evaluate", partial_case / "pred", partial_case / "ref", "--out", out,
        "--labels", dataset_json,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "5600 reference voxels of the ignore label 3 left out of" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ignore_label"] == 3 and summary["ignored_voxels"] == {"case": 5600}
    assert list(summary["structures"]) == ["liver", "spleen"]
    assert summary["structures"]["liver"]["dice"] == 1.0
    assert "ignore label 3" in (out / "report.html").read_text()


def test_an_ignore_label_that_is_not_the_highest_is_refused_naming_the_file(
    partial_case: Path,
) -> None:
    labels = partial_case / "labels.json"
    labels.write_text(json.dumps({"0": "background", "1": "Ignore", "2": "liver"}))
    result = run_cli(
        "evaluate", partial_case / "pred", partial_case / "ref", "--out", partial_case / "r",
        "--labels", labels,
    )  # fmt: skip
    assert result.exit_code == 2
    assert f"error: {labels}: the label named 'ignore' has value 1" in result.output
    with pytest.raises(IgnoreLabelError, match="must be the highest label value"):
        evaluate_pairing(
            pair_label_maps(partial_case / "pred", partial_case / "ref"),
            label_names={0: "background", 1: "ignore", 2: "liver"},
        )
