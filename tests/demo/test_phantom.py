"""Synthetic CT phantom: analytic volumes, HU values, world-space anatomy, demo dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medseg.demo.dicom_writer import TransferSyntax
from medseg.demo.phantom import (
    PHANTOM_LABELS,
    TISSUE_HU,
    DemoDataset,
    generate_demo_dataset,
    make_phantom,
    sample_anatomy,
)
from medseg.errors import PhantomError
from medseg.io.dicom import read_dicom_series
from medseg.io.nifti import read_nifti
from medseg.volume import Volume
from tests.demo.series_readback import read_series

STRUCTURES = [label for label in PHANTOM_LABELS if label != 0]

# (orientation, spacing_mm, rotation_deg): axial, fine, coronal, sagittal, flipped, oblique.
GRIDS = {
    "axial_lps": ("LPS", (1.5, 1.5, 2.5), (0.0, 0.0, 0.0)),
    "fine_ras": ("RAS", (0.8, 0.8, 1.5), (0.0, 0.0, 0.0)),
    "coronal_lip": ("LIP", (1.4, 1.6, 3.0), (0.0, 0.0, 0.0)),
    "sagittal_pir": ("PIR", (1.1, 1.3, 2.0), (0.0, 0.0, 0.0)),
    "flipped_rpi": ("RPI", (1.5, 1.5, 3.0), (0.0, 0.0, 0.0)),
    "oblique_lps": ("LPS", (1.0, 1.2, 2.5), (4.0, -3.0, 5.0)),
}


def phantom_on(grid: str, seed: int = 3) -> tuple[Volume, Volume]:
    orientation, spacing, rotation = GRIDS[grid]
    return make_phantom(
        seed=seed, orientation=orientation, spacing_mm=spacing, rotation_deg=rotation
    )


def world_centroid_mm(labels: Volume, label: int) -> np.ndarray:
    indices = np.argwhere(labels.array == label).mean(axis=0)
    return labels.affine_ras[:3, :3] @ indices + labels.affine_ras[:3, 3]


@pytest.mark.parametrize("grid", GRIDS)
def test_organ_volumes_match_the_analytic_shapes(grid: str) -> None:
    _, labels = phantom_on(grid)
    anatomy = sample_anatomy(3)
    for label in STRUCTURES:
        measured = np.count_nonzero(labels.array == label) * labels.voxel_volume_ml
        assert measured == pytest.approx(anatomy.volume_ml(label), rel=0.03), PHANTOM_LABELS[label]


def test_analytic_volumes_are_plausible_organ_sizes() -> None:
    anatomy = sample_anatomy(0)
    liver, spleen, kidney_left, kidney_right, spine = (anatomy.volume_ml(n) for n in STRUCTURES)
    assert 40 < liver < 80 and 9 < spleen < 20 and 5 < spine < 45
    assert 5 < kidney_left < 10 and 5 < kidney_right < 10


EXPECTED_HU = {
    1: TISSUE_HU["liver"],
    2: TISSUE_HU["spleen"],
    3: TISSUE_HU["kidney"],
    4: TISSUE_HU["kidney"],
    5: TISSUE_HU["bone"],
}


@pytest.mark.parametrize(("label", "hu"), EXPECTED_HU.items(), ids=lambda v: str(v))
def test_mean_hu_inside_each_structure(label: int, hu: int) -> None:
    ct, labels = make_phantom(seed=5, spacing_mm=(0.8, 0.8, 1.5))
    # Erode away the boundary blurred by the partial-volume smoothing.
    core = ndimage.binary_erosion(labels.array == label, iterations=2)
    assert core.sum() > 200
    assert ct.array[core].mean() == pytest.approx(hu, abs=3.0)


def test_noise_has_the_requested_sigma() -> None:
    ct, labels = make_phantom(seed=5, noise_sigma_hu=20.0)
    core = ndimage.binary_erosion(labels.array == 1, iterations=3)
    assert ct.array[core].std() == pytest.approx(20.0, rel=0.1)


def test_background_is_air_and_body_is_soft_tissue_and_fat() -> None:
    ct, labels = make_phantom(seed=2)
    corners = ct.array[:3, :3, :]
    # Median, not mean: noise below -1024 HU is clipped as a scanner does, biasing the mean.
    assert np.median(corners) == pytest.approx(TISSUE_HU["air"], abs=3)
    values = ct.array[labels.array == 0]
    assert np.mean(np.abs(values - TISSUE_HU["fat"]) < 40) > 0.02
    assert np.mean(np.abs(values - TISSUE_HU["soft_tissue"]) < 40) > 0.2


def test_same_seed_gives_identical_volumes() -> None:
    first, second = make_phantom(seed=11), make_phantom(seed=11)
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a.array, b.array)
        assert np.array_equal(a.affine_ras, b.affine_ras)


def test_different_seeds_give_different_anatomy() -> None:
    (_, labels_a), (_, labels_b) = make_phantom(seed=1), make_phantom(seed=2)
    assert not np.allclose(world_centroid_mm(labels_a, 1), world_centroid_mm(labels_b, 1), atol=1)


def test_label_values_are_exactly_the_label_keys_and_dtypes() -> None:
    ct, labels = make_phantom(seed=7)
    assert set(np.unique(labels.array).tolist()) == set(PHANTOM_LABELS)
    assert ct.array.dtype == np.int16 and labels.array.dtype == np.uint8
    assert ct.same_grid(labels, atol_mm=0.0)


@pytest.mark.parametrize("grid", [g for g in GRIDS if g != "axial_lps"])
def test_anatomy_is_the_same_in_world_coordinates_whatever_the_grid(grid: str) -> None:
    _, reference = phantom_on("axial_lps")
    _, labels = phantom_on(grid)
    for label in STRUCTURES:
        np.testing.assert_allclose(
            world_centroid_mm(labels, label), world_centroid_mm(reference, label), atol=0.6
        )


@pytest.mark.parametrize("grid", GRIDS)
def test_grid_has_the_requested_orientation_and_spacing(grid: str) -> None:
    orientation, spacing, rotation = GRIDS[grid]
    ct, _ = phantom_on(grid)
    assert ct.orientation == orientation
    np.testing.assert_allclose(ct.spacing_mm, spacing, atol=1e-9)
    oblique = any(rotation)
    assert np.count_nonzero(np.abs(ct.affine_ras[:3, :3]) > 1e-9) == (9 if oblique else 3)


def test_explicit_shape_is_used() -> None:
    ct, labels = make_phantom(seed=0, shape=(40, 30, 20))
    assert ct.shape == labels.shape == (40, 30, 20)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"orientation": "LPX"}, "three-letter code"),
        ({"orientation": "LLS"}, "uses an axis twice"),
        ({"spacing_mm": (1.0, 0.0, 1.0)}, "spacing_mm must be positive"),
        ({"shape": (10, 0, 10)}, "shape must be three positive sizes"),
    ],
)
def test_invalid_parameters_raise(options: dict[str, object], message: str) -> None:
    with pytest.raises(PhantomError, match=message):
        make_phantom(seed=0, **options)


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory: pytest.TempPathFactory) -> DemoDataset:
    return generate_demo_dataset(tmp_path_factory.mktemp("demo"), n_cases=6, seed=0)


def test_demo_dataset_layout_mixes_file_names_and_syntaxes(demo_dataset: DemoDataset) -> None:
    root = demo_dataset.root
    assert [c.case_id for c in demo_dataset.cases] == [f"phantom_{n:03d}" for n in range(6)]
    assert demo_dataset.label_names == PHANTOM_LABELS
    assert {c.transfer_syntax for c in demo_dataset.cases} == set(TransferSyntax)
    names = [p.name for c in demo_dataset.cases for p in c.dicom_files]
    assert any(n.endswith(".dcm") for n in names)
    assert any("." not in n for n in names)
    assert any(" " in n for n in names)
    assert any(n.startswith("1.2.") and not n.endswith(".dcm") for n in names)
    for case in demo_dataset.cases:
        assert case.dicom_dir == root / "dicom" / case.case_id
        assert sorted(case.dicom_dir.iterdir()) == sorted(case.dicom_files)
        assert case.label_path == root / "labels" / f"{case.case_id}.nii.gz"
        assert case.image_path == root / "nifti" / f"{case.case_id}.nii.gz"
    assert demo_dataset.summary_path.is_file()


def test_demo_nifti_files_are_on_the_grid_read_from_dicom(demo_dataset: DemoDataset) -> None:
    for case in demo_dataset.cases:
        series = read_series(case.dicom_files)
        ingested = Volume(series.array, series.affine_ras).to_closest_ras()
        image, labels = read_nifti(case.image_path), read_nifti(case.label_path)
        np.testing.assert_allclose(labels.affine_ras, ingested.affine_ras, atol=1e-4, rtol=0)
        np.testing.assert_allclose(image.affine_ras, ingested.affine_ras, atol=1e-4, rtol=0)
        assert np.array_equal(image.array, ingested.array), case.case_id
        assert labels.shape == ingested.shape
        assert set(np.unique(labels.array).tolist()) == set(PHANTOM_LABELS), case.case_id


def test_demo_labels_match_the_medseg_dicom_reader(demo_dataset: DemoDataset) -> None:
    for case in demo_dataset.cases:
        scan = read_dicom_series(case.dicom_dir)
        labels = read_nifti(case.label_path)
        assert scan.same_grid(labels, atol_mm=1e-4), case.case_id
        assert np.array_equal(scan.array, read_nifti(case.image_path).array), case.case_id


def test_demo_acquisition_grids_are_varied(demo_dataset: DemoDataset) -> None:
    orientations = {case.orientation for case in demo_dataset.cases}
    assert {"LPS", "RAS", "LIP", "PIR", "RPI"} <= orientations
    assert len({case.spacing_mm for case in demo_dataset.cases}) == 6


def test_demo_dataset_is_byte_identical_for_a_seed(
    demo_dataset: DemoDataset, tmp_path: Path
) -> None:
    again = generate_demo_dataset(tmp_path, n_cases=2, seed=0)
    for first, second in zip(demo_dataset.cases, again.cases, strict=False):
        pairs = [*zip(first.dicom_files, second.dicom_files, strict=True)]
        pairs += [(first.image_path, second.image_path), (first.label_path, second.label_path)]
        assert all(a.read_bytes() == b.read_bytes() for a, b in pairs), first.case_id


def test_regenerating_replaces_the_case_folders(tmp_path: Path) -> None:
    first = generate_demo_dataset(tmp_path, n_cases=1, seed=4)
    stale = first.cases[0].dicom_dir / "stale.dcm"
    stale.write_bytes(b"left over from an earlier run")
    second = generate_demo_dataset(tmp_path, n_cases=1, seed=5)
    assert not stale.exists()
    assert sorted(second.cases[0].dicom_dir.iterdir()) == sorted(second.cases[0].dicom_files)
