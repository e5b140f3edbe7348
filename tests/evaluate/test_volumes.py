"""Organ volumes and mean intensities: a phantom's known anatomy, and (a reference test)
TotalSegmentator's statistics.json from ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.demo.phantom import PHANTOM_LABELS, TISSUE_HU, make_phantom, sample_anatomy
from medseg.errors import GeometryMismatchError
from medseg.evaluate import volumes
from medseg.evaluate.volumes import intensity_spread, structure_statistics
from medseg.io.nifti import read_nifti
from medseg.volume import Volume

REFERENCE = "totalsegmentator_ref"


# Mean HU of each phantom structure without noise or blur: the spine label is the bone wall.
PHANTOM_HU = {
    "liver": TISSUE_HU["liver"],
    "spleen": TISSUE_HU["spleen"],
    "kidney_left": TISSUE_HU["kidney"],
    "kidney_right": TISSUE_HU["kidney"],
    "spine": TISSUE_HU["bone"],
}


@pytest.mark.parametrize(
    "grid",
    [
        {"spacing_mm": (1.5, 1.5, 2.0)},
        {"spacing_mm": (1.2, 1.6, 2.5), "orientation": "LIP", "rotation_deg": (4.0, 0.0, -3.0)},
    ],
    ids=["axial", "oblique"],
)
@pytest.mark.parametrize("seed", [1, 2])
def test_volumes_and_intensities_equal_the_phantom_anatomy(seed: int, grid: dict) -> None:
    ct, labels = make_phantom(seed=seed, noise_sigma_hu=0.0, smoothing_sigma_vox=0.0, **grid)
    ours = structure_statistics(labels, label_names=PHANTOM_LABELS, image=ct)
    anatomy = sample_anatomy(seed)
    voxel_mm3 = abs(np.linalg.det(labels.affine_ras[:3, :3]))
    for value, name in PHANTOM_LABELS.items():
        if value == 0:
            continue
        voxels = int(np.count_nonzero(labels.array == value))
        assert ours[name]["voxels"] == voxels
        assert ours[name]["volume"] == pytest.approx(voxels * voxel_mm3, rel=1e-9)
        # the analytic volume, to within the voxelisation error (under 0.8 % on these grids)
        assert ours[name]["volume_ml"] == pytest.approx(anatomy.volume_ml(value), rel=0.01)
        assert ours[name]["intensity"] == pytest.approx(PHANTOM_HU[name], abs=1e-6)


def test_intensity_spread_equals_numpy_inside_each_structure() -> None:
    ct, labels = make_phantom(seed=3, noise_sigma_hu=20.0, smoothing_sigma_vox=0.0)
    names = {**PHANTOM_LABELS, 9: "absent"}
    spread = intensity_spread(labels, ct, label_names=names)
    assert set(spread) == {n for v, n in names.items() if v != 0}
    for value, name in PHANTOM_LABELS.items():
        if value == 0:
            continue
        inside = np.asarray(ct.array, np.float64)[labels.array == value]
        p5, median, p95 = np.percentile(inside, [5, 50, 95])
        assert spread[name] == pytest.approx(
            {
                "intensity_std": inside.std(),
                "intensity_median": median,
                "intensity_p5": p5,
                "intensity_p95": p95,
            },
            abs=1e-5,
        )
    # the phantom's tissues with 20 HU of noise: the median near the tissue, the spread wide
    assert spread["liver"]["intensity_median"] == pytest.approx(TISSUE_HU["liver"], abs=2.0)
    assert spread["liver"]["intensity_std"] == pytest.approx(20.0, rel=0.1)
    assert spread["absent"] == dict.fromkeys(spread["absent"], None)
    with pytest.raises(GeometryMismatchError, match="different grids"):
        intensity_spread(labels, Volume(ct.array, np.diag([2.0, 1.0, 1.0, 1.0])), label_names=names)


def test_volume_follows_the_affine_not_the_voxel_count() -> None:
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2:6, 2:6, 2:4] = 1  # 32 voxels
    oblique = np.eye(4)
    angle = np.radians(30)
    oblique[:3, :3] = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    ) @ np.diag([0.5, 0.8, 2.5])
    stats = structure_statistics(
        Volume(labels, oblique), label_names={0: "bg", 1: "organ", 2: "absent"}
    )
    assert stats["organ"]["volume_ml"] == pytest.approx(32 * 0.5 * 0.8 * 2.5 / 1000)
    assert stats["absent"] == {"volume": 0.0, "volume_ml": 0.0, "voxels": 0, "intensity": 0.0}


def test_intensity_of_a_multi_channel_scan_is_channel_0s() -> None:
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[:2] = 1
    image = np.stack([np.full((4, 4, 4), 10.0), np.full((4, 4, 4), 99.0)], axis=-1)
    image[:2, ..., 0] = 40.0
    stats = structure_statistics(
        Volume(labels, np.eye(4)), label_names={1: "a"}, image=Volume(image, np.eye(4))
    )
    assert stats["a"] == {"volume": 32.0, "volume_ml": 0.032, "voxels": 32, "intensity": 40.0}


def test_counting_slab_by_slab_gives_the_whole_volume_s_counts_and_means(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (9, 5, 6)).astype(np.uint8)
    image = rng.normal(0, 100, (9, 5, 6, 2))
    names = {1: "a", 2: "b", 3: "c", 7: "absent"}
    monkeypatch.setattr(volumes, "SLAB_VOXELS", 40)  # slabs of one 5 x 6 row: 9 of them
    stats = structure_statistics(
        Volume(labels, np.eye(4)), label_names=names, image=Volume(image, np.eye(4))
    )
    for value, name in names.items():
        inside = labels == value
        assert stats[name]["voxels"] == int(inside.sum())
        expected = float(image[..., 0][inside].mean()) if inside.any() else 0.0
        assert stats[name]["intensity"] == pytest.approx(expected, abs=1e-5)


def test_scan_on_another_grid_is_refused() -> None:
    labels = Volume(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    image = Volume(np.zeros((4, 4, 4)), np.diag([2.0, 1.0, 1.0, 1.0]))
    with pytest.raises(GeometryMismatchError, match="different grids"):
        structure_statistics(labels, label_names={1: "a"}, image=image)


# --- reference data (../shared/data) ---------------------------------------------------------


def test_volumes_and_intensities_equal_totalsegmentator_statistics(shared_data: Path) -> None:
    root = shared_data / REFERENCE
    names = {
        int(k): v for k, v in json.loads((root / "dataset.json").read_text())["labels"].items()
    }
    labels = read_nifti(root / "tests/reference_files/example_seg_fast.nii.gz")
    image = read_nifti(root / "tests/reference_files/example_ct_sm.nii.gz")
    ours = structure_statistics(labels, label_names=names, image=image)
    reference = json.loads(
        (root / "tests/reference_files/example_seg_fast/statistics.json").read_text()
    )
    present = [name for name in ours if ours[name]["voxels"] > 0]
    assert len(present) == 40
    for name, values in ours.items():
        expected = reference[name]
        assert values["volume"] == pytest.approx(expected["volume"], rel=1e-3)
        assert values["volume_ml"] == pytest.approx(expected["volume"] / 1000.0, rel=1e-3)
        assert values["intensity"] == pytest.approx(expected["intensity"], abs=0.05)
