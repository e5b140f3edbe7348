"""Preprocess then invert recovers the original geometry and labels; normalization is right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.io.dicom import read_dicom_series
from medseg.io.nifti import read_nifti
from medseg.manifest import ManifestRecord
from medseg.preprocess.case import preprocess_case, restore_label_map
from medseg.preprocess.config import NormalizationScheme, PlanOptions
from medseg.preprocess.fingerprint import (
    DatasetFingerprint,
    IntensityStatistics,
    fingerprint_case,
)
from medseg.preprocess.plan import make_plan
from medseg.volume import Volume

TOTALSEG = "totalsegmentator_ref/tests/reference_files"


def _plan(image: Volume, *, spacing: tuple[float, float, float] | None, modality: str):
    stats = IntensityStatistics(40.0, 50.0, -90.0, 40.0, 250.0, -1024.0, 1500.0)
    fingerprint = DatasetFingerprint(
        1, modality, [list(image.spacing_mm)], [list(image.shape[:3])], stats, [0]
    )
    options = PlanOptions(target_spacing=spacing or tuple(image.spacing_mm))
    return make_plan(fingerprint, options=options, label_names={0: "bg"}, manifest_sha256="0" * 64)


def _dice_per_label(a: np.ndarray, b: np.ndarray) -> dict[int, float]:
    values = [v for v in np.unique(a) if v != 0]
    return {
        int(v): 2 * np.sum((a == v) & (b == v)) / (np.sum(a == v) + np.sum(b == v)) for v in values
    }


def _cases(shared_data: Path) -> dict[str, tuple[Volume, Volume, str]]:
    ts = shared_data / TOTALSEG
    hippo = shared_data / "msd_hippocampus"
    return {
        "hippocampus_001": (
            read_nifti(hippo / "images/hippocampus_001.nii.gz"),
            read_nifti(hippo / "labels/hippocampus_001.nii.gz"),
            "MR",
        ),
        "totalseg_nifti": (
            read_nifti(ts / "example_ct_sm.nii.gz"),
            read_nifti(ts / "example_seg.nii.gz"),
            "CT",
        ),
        # a DICOM-derived scan with a label stored in another axis order (dcm2niix's)
        "totalseg_dicom": (
            read_dicom_series(ts / "example_ct_dicom"),
            read_nifti(ts / "example_seg_dicom.nii.gz"),
            "CT",
        ),
        # an LAS-stored MR: restoring must give back the original axis order
        "monai_las": (
            read_nifti(shared_data / "monai_testing_data/tests/testing_data/anatomical.nii"),
            read_nifti(
                shared_data / "monai_testing_data/tests/testing_data/anatomical_label.nii.gz"
            ),
            "MR",
        ),
    }


@pytest.mark.parametrize(
    "name", ["hippocampus_001", "totalseg_nifti", "totalseg_dicom", "monai_las"]
)
@pytest.mark.parametrize("spacing", [None, (1.7, 1.7, 1.7)])
def test_preprocess_then_restore_gives_the_original_labels(
    shared_data: Path, name: str, spacing: tuple[float, float, float] | None
) -> None:
    image, label, modality = _cases(shared_data)[name]
    plan = _plan(image, spacing=spacing, modality=modality)
    case = preprocess_case(image, label, plan, case_id=name)
    assert case.image.dtype == np.float32 and case.image.shape[1:] == case.label.shape
    restored = restore_label_map(case.label, case.properties)
    # predictions come back on the scan's grid, in the scan's own axis order
    assert restored.shape == image.shape[:3]
    assert np.allclose(restored.affine_ras, image.affine_ras, atol=1e-4)
    label = label.to_closest_ras().to_orientation_of(image.affine_ras)
    dice = _dice_per_label(label.array, restored.array)
    if spacing is None:  # same grid: nearest round trip is exact
        assert np.array_equal(restored.array, label.array)
    else:  # through a coarser grid small structures lose detail (hippocampus: ~0.87)
        assert min(dice.values()) > 0.75 and np.mean(list(dice.values())) > 0.85


def test_mr_cases_are_z_scored(shared_data: Path) -> None:
    image, label, _ = _cases(shared_data)["hippocampus_001"]
    plan = _plan(image, spacing=None, modality="MR")
    assert plan.normalization.scheme is NormalizationScheme.ZSCORE
    case = preprocess_case(image, label, plan, case_id="h")
    assert float(case.image.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(case.image.std()) == pytest.approx(1.0, abs=1e-4)
    assert case.properties.normalization["mean"] == pytest.approx(
        float(image.array.mean()), rel=1e-5
    )


def test_ct_is_clipped_then_z_scored_with_dataset_foreground_statistics(shared_data: Path) -> None:
    image, label, _ = _cases(shared_data)["totalseg_nifti"]
    plan = _plan(image, spacing=None, modality="CT")
    case = preprocess_case(image, label, plan, case_id="ct")
    low, high = (-90.0 - 40.0) / 50.0, (250.0 - 40.0) / 50.0
    assert float(case.image.min()) == pytest.approx(low, abs=1e-5)
    assert float(case.image.max()) == pytest.approx(high, abs=1e-5)
    inside = (image.array > -90) & (image.array < 250)
    assert np.allclose(case.image[0][inside], (image.array[inside] - 40.0) / 50.0, atol=1e-4)


def test_fingerprint_statistics_equal_numpy_over_all_labelled_voxels(shared_data: Path) -> None:
    root = shared_data / TOTALSEG
    record = ManifestRecord(
        case_id="ct",
        image="example_ct_sm.nii.gz",
        label="example_seg.nii.gz",
        sha256="0" * 64,
        label_sha256="0" * 64,
        modality="CT",
        shape=[122, 101, 30],
        spacing=[3.0, 3.0, 3.0],
        source="x",
        split="train",
    )
    case = fingerprint_case(
        record, manifest_path=root / "manifest.jsonl", data_root=None, samples=10**7, seed=0
    )
    image, label = (
        read_nifti(root / "example_ct_sm.nii.gz"),
        read_nifti(root / "example_seg.nii.gz"),
    )
    expected = np.sort(image.array[label.array > 0].astype(np.float32))
    assert np.array_equal(np.sort(case.foreground_samples), expected)
    assert case.spacing == [3.0, 3.0, 3.0] and case.shape == [122, 101, 30]
    sampled = fingerprint_case(
        record, manifest_path=root / "manifest.jsonl", data_root=None, samples=5000, seed=0
    )
    assert sampled.foreground_samples.size == 5000
    assert np.median(sampled.foreground_samples) == pytest.approx(np.median(expected), abs=15)
