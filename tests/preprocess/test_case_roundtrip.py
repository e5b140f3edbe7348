"""Preprocess then invert recovers the original geometry and labels; normalization is right.

On a phantom CT stored three ways; the same checks run on real scans from ../shared/data
(the reference cases).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.demo.dicom_writer import to_dicom_slice_order
from medseg.demo.phantom import make_phantom
from medseg.io.dicom import read_dicom_series
from medseg.io.nifti import read_nifti, write_nifti
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
from tests.phantoms import SMALL_SPACING_MM, write_phantom_dicom, write_phantom_nifti

TOTALSEG = "totalsegmentator_ref/tests/reference_files"
PHANTOM_SEED = 2


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


def _phantom_cases(folder: Path) -> dict[str, tuple[Volume, Volume, str]]:
    """A phantom CT written and read back three ways."""
    nifti = write_phantom_nifti(
        folder / "ct.nii.gz", PHANTOM_SEED, label_path=folder / "ct_label.nii.gz"
    )
    write_phantom_dicom(folder / "dicom", PHANTOM_SEED)
    # the label in the acquisition's axis order (LPS, as DICOM stores it), not the scan's RAS
    _, acquisition_label = make_phantom(seed=PHANTOM_SEED, spacing_mm=SMALL_SPACING_MM)
    write_nifti(to_dicom_slice_order(acquisition_label), folder / "dicom_label.nii.gz")
    las_image, las_label = make_phantom(
        seed=PHANTOM_SEED, spacing_mm=SMALL_SPACING_MM, orientation="LAS"
    )
    write_nifti(las_image, folder / "las.nii.gz")
    write_nifti(las_label, folder / "las_label.nii.gz")
    return {
        "phantom_nifti": (read_nifti(nifti), read_nifti(folder / "ct_label.nii.gz"), "CT"),
        # a DICOM-derived scan with a label stored in another axis order
        "phantom_dicom": (
            read_dicom_series(folder / "dicom"),
            read_nifti(folder / "dicom_label.nii.gz"),
            "CT",
        ),
        # an LAS-stored scan: restoring must give back the original axis order
        "phantom_las": (
            read_nifti(folder / "las.nii.gz"),
            read_nifti(folder / "las_label.nii.gz"),
            "MR",
        ),
    }


def _reference_cases(shared_data: Path) -> dict[str, tuple[Volume, Volume, str]]:
    """Real scans from ../shared/data: MSD hippocampus, TotalSegmentator, MONAI's LAS MR."""
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


PHANTOM_CASES = ["phantom_nifti", "phantom_dicom", "phantom_las"]
REFERENCE_CASES = ["hippocampus_001", "totalseg_nifti", "totalseg_dicom", "monai_las"]


@pytest.fixture(scope="module")
def phantom_cases(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _phantom_cases(tmp_path_factory.mktemp("phantom-cases"))


def _case(request: pytest.FixtureRequest, name: str) -> tuple[Volume, Volume, str]:
    """A phantom case, or a reference case (which needs ../shared/data)."""
    if name in PHANTOM_CASES:
        return request.getfixturevalue("phantom_cases")[name]
    return _reference_cases(request.getfixturevalue("shared_data"))[name]


@pytest.mark.parametrize("name", PHANTOM_CASES + REFERENCE_CASES)
@pytest.mark.parametrize("spacing", [None, (1.7, 1.7, 1.7)])
def test_preprocess_then_restore_gives_the_original_labels(
    request: pytest.FixtureRequest, name: str, spacing: tuple[float, float, float] | None
) -> None:
    image, label, modality = _case(request, name)
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
    else:  # through another grid small structures lose detail (hippocampus: ~0.87)
        assert min(dice.values()) > 0.75 and np.mean(list(dice.values())) > 0.85


def test_phantom_cases_are_stored_in_the_axis_orders_they_test(phantom_cases: dict) -> None:
    orientations = {
        name: (image.orientation, label.orientation)
        for name, (image, label, _) in phantom_cases.items()
    }
    assert orientations == {
        "phantom_nifti": ("RAS", "RAS"),
        "phantom_dicom": ("RAS", "LPS"),
        "phantom_las": ("LAS", "LAS"),
    }


@pytest.mark.parametrize("name", ["phantom_las", "hippocampus_001"])
def test_mr_cases_are_z_scored(request: pytest.FixtureRequest, name: str) -> None:
    image, label, _ = _case(request, name)
    plan = _plan(image, spacing=None, modality="MR")
    assert plan.normalization.scheme is NormalizationScheme.ZSCORE
    case = preprocess_case(image, label, plan, case_id="h")
    assert float(case.image.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(case.image.std()) == pytest.approx(1.0, abs=1e-4)
    assert case.properties.normalization["mean"] == pytest.approx(
        float(image.array.mean()), rel=1e-5
    )


@pytest.mark.parametrize("name", ["phantom_nifti", "totalseg_nifti"])
def test_ct_is_clipped_then_z_scored_with_dataset_foreground_statistics(
    request: pytest.FixtureRequest, name: str
) -> None:
    image, label, _ = _case(request, name)
    plan = _plan(image, spacing=None, modality="CT")
    case = preprocess_case(image, label, plan, case_id="ct")
    low, high = (-90.0 - 40.0) / 50.0, (250.0 - 40.0) / 50.0
    assert float(case.image.min()) == pytest.approx(low, abs=1e-5)
    assert float(case.image.max()) == pytest.approx(high, abs=1e-5)
    inside = (image.array > -90) & (image.array < 250)
    assert np.allclose(case.image[0][inside], (image.array[inside] - 40.0) / 50.0, atol=1e-4)


# image, label, shape, spacing, samples of the sub-sampled fingerprint
FINGERPRINT_CASES = {
    "phantom": ("ct.nii.gz", "ct_label.nii.gz", [49, 39, 33], [3.0, 3.0, 4.0], 1000),
    "totalsegmentator": (
        "example_ct_sm.nii.gz",
        "example_seg.nii.gz",
        [122, 101, 30],
        [3.0, 3.0, 3.0],
        5000,
    ),
}


@pytest.mark.parametrize("source", sorted(FINGERPRINT_CASES))
def test_fingerprint_statistics_equal_numpy_over_all_labelled_voxels(
    request: pytest.FixtureRequest, tmp_path: Path, source: str
) -> None:
    image_name, label_name, shape, spacing, samples = FINGERPRINT_CASES[source]
    if source == "phantom":
        root = tmp_path
        write_phantom_nifti(root / image_name, PHANTOM_SEED, label_path=root / label_name)
    else:
        root = request.getfixturevalue("shared_data") / TOTALSEG
    record = ManifestRecord(
        case_id="ct",
        image=image_name,
        label=label_name,
        sha256="0" * 64,
        label_sha256="0" * 64,
        modality="CT",
        shape=shape,
        spacing=spacing,
        source="x",
        split="train",
    )
    case = fingerprint_case(
        record, manifest_path=root / "manifest.jsonl", data_root=None, samples=10**7, seed=0
    )
    image, label = read_nifti(root / image_name), read_nifti(root / label_name)
    expected = np.sort(image.array[label.array > 0].astype(np.float32))
    assert np.array_equal(np.sort(case.foreground_samples[0]), expected)
    assert case.spacing == spacing and case.shape == shape
    sampled = fingerprint_case(
        record, manifest_path=root / "manifest.jsonl", data_root=None, samples=samples, seed=0
    )
    assert sampled.foreground_samples.size == samples < expected.size
    assert np.median(sampled.foreground_samples) == pytest.approx(np.median(expected), abs=15)
