"""Pairing predictions with references by case name, including batch output folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.evaluate.pairing import pair_label_maps
from medseg.io.nifti import write_nifti
from medseg.volume import Volume


def _label_map(path: Path) -> Path:
    return write_nifti(Volume(np.zeros((4, 4, 4), np.uint8), np.eye(4)), path)


def test_flat_files_and_batch_case_folders_pair_and_the_rest_is_reported(tmp_path: Path) -> None:
    predictions, references = tmp_path / "pred", tmp_path / "ref"
    _label_map(predictions / "flat_case.nii.gz")
    _label_map(predictions / "batch_case" / "batch_case.nii.gz")  # medseg batch layout
    _label_map(predictions / "batch_case" / "other.nii.gz")  # not the case's label map
    _label_map(predictions / ".staging" / ".staging.nii.gz")  # hidden: never a case
    _label_map(predictions / "extra.nii.gz")
    for case in ("flat_case", "batch_case", "missing_case"):
        _label_map(references / f"{case}.nii.gz")

    pairing = pair_label_maps(predictions, references)

    assert [(case, p.relative_to(tmp_path).as_posix()) for case, p, _ in pairing.pairs] == [
        ("batch_case", "pred/batch_case/batch_case.nii.gz"),
        ("flat_case", "pred/flat_case.nii.gz"),
    ]
    assert pairing.missing_prediction == ["missing_case"]
    assert pairing.missing_reference == ["extra"]
