"""DICOM geometry rules on series written by the test itself (known truth)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.demo.dicom_writer import write_dicom_series
from medseg.errors import MissingSlicesError
from medseg.io.dicom import read_dicom_series, scan_dicom_files
from medseg.volume import Volume


def _rotation_x(degrees: float) -> np.ndarray:
    angle = np.radians(degrees)
    return np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )


def _volume(
    shape: tuple[int, int, int], *, spacing: tuple[float, float, float], tilt_deg: float = 0.0
) -> Volume:
    rng = np.random.default_rng(7)
    array = rng.integers(-1000, 1500, size=shape).astype(np.int16)
    affine = np.eye(4)
    # LPS-like storage (i towards Left, j towards Posterior), slightly oblique
    affine[:3, :3] = _rotation_x(tilt_deg) @ np.diag([-spacing[0], -spacing[1], spacing[2]])
    affine[:3, 3] = [100.0, 80.0, -50.0]
    return Volume(array, affine)


def _write(volume: Volume, folder: Path) -> list[Path]:
    return write_dicom_series(
        volume, folder, series_description="synthetic", patient_id="TEST", uid_seed=str(folder)
    )


def test_oblique_series_round_trips_exactly_whatever_the_instance_numbers(tmp_path: Path) -> None:
    volume = _volume((24, 20, 12), spacing=(0.8, 0.9, 2.5), tilt_deg=12.0)
    paths = _write(volume, tmp_path / "series")
    numbers = [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in paths]
    assert numbers != sorted(numbers)  # the writer shuffles InstanceNumber on purpose
    read = read_dicom_series(tmp_path / "series")
    expected = volume.to_closest_ras()
    assert np.array_equal(read.array, expected.array)
    assert np.allclose(read.affine_ras, expected.affine_ras, atol=1e-4)
    assert read.metadata["corrections"] == []


def test_variable_spacing_is_resampled_to_equidistant_slices(tmp_path: Path) -> None:
    volume = _volume((16, 16, 20), spacing=(1.0, 1.0, 2.5))
    paths = _write(volume, tmp_path / "series")
    # move slices 10..19 so that they step 5 mm instead of 2.5 mm
    for k in range(10, 20):
        dataset = pydicom.dcmread(paths[k])
        position = [float(v) for v in dataset.ImagePositionPatient]
        position[2] += 2.5 * (k - 9)
        dataset.ImagePositionPatient = [f"{v:.4f}" for v in position]
        dataset.save_as(paths[k])
    read = read_dicom_series(tmp_path / "series")
    assert read.spacing_mm[2] == pytest.approx(2.5)
    assert read.shape == (16, 16, 9 + 1 + 2 * 10)  # 22.5 mm then 50 mm at 2.5 mm steps
    assert "variable slice spacing" in read.metadata["corrections"][0]
    # slices at acquired positions keep their values; one between two 5 mm slices is the mean
    original = volume.to_closest_ras().array
    assert np.array_equal(read.array[:, :, 9], original[:, :, 9])
    assert np.array_equal(read.array[:, :, 11], original[:, :, 10])
    between = (original[:, :, 10].astype(float) + original[:, :, 11]) / 2
    assert np.abs(read.array[:, :, 12] - between).max() <= 0.5


def test_a_deleted_middle_slice_is_a_missing_slice_error_naming_its_neighbours(
    tmp_path: Path,
) -> None:
    paths = _write(_volume((8, 8, 10), spacing=(1, 1, 3)), tmp_path / "series")
    paths[4].unlink()
    with pytest.raises(MissingSlicesError, match=rf"{paths[3].name} and {paths[5].name}"):
        read_dicom_series(tmp_path / "series")


def test_the_same_instance_stored_twice_is_used_once(tmp_path: Path) -> None:
    volume = _volume((8, 8, 6), spacing=(1, 1, 2))
    _write(volume, tmp_path / "tree" / "a")
    shutil.copytree(tmp_path / "tree" / "a", tmp_path / "tree" / "backup")
    scan = scan_dicom_files(sorted((tmp_path / "tree").rglob("*.dcm")))
    assert len(scan.series) == 1 and len(scan.series[0].frames) == 6


def test_single_slice_takes_its_spacing_from_slice_thickness(tmp_path: Path) -> None:
    volume = _volume((8, 8, 1), spacing=(0.5, 0.5, 3.0))
    _write(volume, tmp_path / "one")
    read = read_dicom_series(tmp_path / "one")
    assert read.spacing_mm == pytest.approx((0.5, 0.5, 3.0))
