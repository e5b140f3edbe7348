"""Small synthetic CT phantoms as real NIfTI files and DICOM series, for component tests.

The demo's generator (``medseg.demo.phantom``) on a coarse grid: 49 x 39 x 33 voxels at
3 x 3 x 4 mm by default, liver, spleen, both kidneys and spine (``PHANTOM_LABELS``), in
milliseconds. Nothing here needs downloaded data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medseg.demo.dicom_writer import TransferSyntax, to_dicom_slice_order, write_dicom_series
from medseg.demo.phantom import PHANTOM_LABELS, make_phantom
from medseg.io.nifti import write_nifti
from medseg.volume import Volume

__all__ = [
    "NESTED_REGIONS",
    "PHANTOM_LABELS",
    "SMALL_SPACING_MM",
    "TWO_CHANNEL_NAMES",
    "WILD_FLOAT_LABELS",
    "WILD_ORPHANS",
    "WILD_PAIRS",
    "nested_regions_phantom",
    "small_phantom",
    "stamp_dicom",
    "two_channel_phantom",
    "write_nested_regions_dataset",
    "write_phantom_dataset",
    "write_phantom_dataset_in_the_wild",
    "write_phantom_dataset_json",
    "write_phantom_dicom",
    "write_phantom_nifti",
    "write_secondary_capture",
    "write_two_channel_dataset",
]

SMALL_SPACING_MM = (3.0, 3.0, 4.0)


def small_phantom(
    seed: int = 0,
    *,
    spacing_mm: tuple[float, float, float] = SMALL_SPACING_MM,
    orientation: str = "LPS",
) -> tuple[Volume, Volume]:
    """``(ct, labels)`` of phantom ``seed`` on a coarse grid, in closest-RAS voxel order."""
    ct, labels = make_phantom(seed=seed, spacing_mm=spacing_mm, orientation=orientation)
    return ct.to_closest_ras(), labels.to_closest_ras()


def write_phantom_nifti(
    image_path: Path, seed: int = 0, *, label_path: Path | None = None, **grid: object
) -> Path:
    """Write phantom ``seed`` as a NIfTI image (HU) and, when ``label_path`` is given, its
    label map on the same grid; returns ``image_path``."""
    ct, labels = small_phantom(seed, **grid)  # type: ignore[arg-type]
    write_nifti(ct, image_path)
    if label_path is not None:
        write_nifti(labels, label_path)
    return Path(image_path)


def write_phantom_dicom(
    folder: Path,
    seed: int = 0,
    *,
    patient_id: str = "PHANTOM",
    patient_name: str = "PHANTOM^TEST",
    transfer_syntax: TransferSyntax = TransferSyntax.EXPLICIT_LE,
    **grid: object,
) -> list[Path]:
    """Write phantom ``seed`` as a CT DICOM series into ``folder`` (created, must be empty).

    Ingesting the series gives the grid and voxels of ``small_phantom(seed, **grid)``.
    """
    grid.setdefault("spacing_mm", SMALL_SPACING_MM)
    ct, _ = make_phantom(seed=seed, **grid)  # type: ignore[arg-type]
    return write_dicom_series(
        to_dicom_slice_order(ct),
        Path(folder),
        series_description=f"phantom {seed}",
        patient_id=patient_id,
        patient_name=patient_name,
        transfer_syntax=transfer_syntax,
        uid_seed=f"medseg-test-phantom-{seed}-{patient_id}",
    )


def stamp_dicom(paths: list[Path], **attributes: object) -> list[Path]:
    """Set DICOM attributes (``keyword=value``) in every file of ``paths`` in place.

    For what the phantom writer does not set (BodyPartExamined, a scout's SeriesDescription,
    other UIDs...); the file meta follows a changed SOPInstanceUID. Returns ``paths``.
    """
    for path in paths:
        dataset = pydicom.dcmread(path)
        for keyword, value in attributes.items():
            setattr(dataset, keyword, value)
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.save_as(path, enforce_file_format=True)
    return paths


def write_phantom_dataset(
    root: Path, seeds: Iterable[int], *, prefix: str = "phantom", **grid: object
) -> list[str]:
    """A flat dataset of phantoms: ``images/`` and ``labels/`` hold ``<prefix>_<seed:03d>.nii.gz``
    for each seed (image in HU, label map on its grid). Returns the case ids, in seed order."""
    case_ids = []
    for seed in seeds:
        case_id = f"{prefix}_{seed:03d}"
        label_path = Path(root) / "labels" / f"{case_id}.nii.gz"
        write_phantom_nifti(
            Path(root) / "images" / f"{case_id}.nii.gz", seed, label_path=label_path, **grid
        )
        case_ids.append(case_id)
    return case_ids


def write_phantom_dataset_json(folder: Path) -> Path:
    """A ``dataset.json`` in ``folder`` naming the phantom labels (``PHANTOM_LABELS``) and the
    modality (CT); returns ``folder``."""
    metadata = {"labels": {str(v): n for v, n in PHANTOM_LABELS.items()}, "modality": {"0": "CT"}}
    (Path(folder) / "dataset.json").write_text(json.dumps(metadata, indent=2))
    return Path(folder)


# Cases of ``write_phantom_dataset_in_the_wild`` that are not image/label pairs, as
# (case id, path) in case-id order: a label without image, an image without label, and a label
# without image that is not even a phantom label map.
WILD_ORPHANS = [
    ("phantom_011", "labels/phantom_011.nii.gz"),
    ("phantom_118", "images/phantom_118.nii.gz"),
    ("phantom_281", "labels/phantom_281.nii.gz"),
]
WILD_PAIRS = 10  # phantom_001 ... phantom_010
WILD_FLOAT_LABELS = ("phantom_003", "phantom_007")


def write_phantom_dataset_in_the_wild(folder: Path) -> Path:
    """A flat dataset of phantoms as MSD hippocampus is found in the wild; returns ``folder``.

    ``images/`` and ``labels/`` pair phantoms 1 to 10 by file name, plus the three orphans of
    ``WILD_ORPHANS`` (``labels/phantom_281`` is 64 x 64 x 20 on another grid). Mixed dtypes:
    the image of phantom 2 is float32, the labels ``WILD_FLOAT_LABELS`` are float32 with
    integral values.
    """
    folder = Path(folder)
    write_phantom_dataset(folder, range(1, WILD_PAIRS + 1))
    write_phantom_nifti(folder / "labels" / "phantom_011.nii.gz", 11)
    write_phantom_nifti(folder / "images" / "phantom_118.nii.gz", 118)
    stray = np.zeros((64, 64, 20), np.uint8)
    stray[20:40, 20:40, 5:15] = 1
    write_nifti(Volume(stray, np.diag([0.8, 0.8, 2.5, 1.0])), folder / "labels/phantom_281.nii.gz")
    image, _ = small_phantom(2)
    write_nifti(
        image.with_array(image.array.astype(np.float32)), folder / "images/phantom_002.nii.gz"
    )
    for case_id in WILD_FLOAT_LABELS:
        _, labels = small_phantom(int(case_id[-3:]))
        write_nifti(
            labels.with_array(labels.array.astype(np.float32)), folder / f"labels/{case_id}.nii.gz"
        )
    return folder


def write_secondary_capture(path: Path, *, patient_name: str = "PHANTOM^TEST") -> Path:
    """An 8-bit RGB secondary capture (a screenshot, not a scan) at ``path``; returns it."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.Modality, dataset.ConversionType = "OT", "WSD"
    dataset.PatientName, dataset.PatientID = patient_name, "PHANTOM"
    dataset.Rows, dataset.Columns, dataset.SamplesPerPixel = 16, 24, 3
    dataset.PhotometricInterpretation, dataset.PlanarConfiguration = "RGB", 0
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
    dataset.PixelRepresentation = 0
    dataset.PixelData = np.full((16, 24, 3), 200, np.uint8).tobytes()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return Path(path)


TWO_CHANNEL_NAMES = ("T1", "T2")
TWO_CHANNEL_GRID = (32, 32, 32)
TWO_CHANNEL_AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _ball(centre: np.ndarray, radius: float) -> np.ndarray:
    grid = np.indices(TWO_CHANNEL_GRID, dtype=np.float32)
    distance = np.sqrt(sum((grid[a] - centre[a]) ** 2 for a in range(3)))
    return distance <= radius


def two_channel_phantom(seed: int = 0) -> tuple[tuple[Volume, Volume], Volume]:
    """``((t1, t2), labels)``: a structure visible only by combining two channels.

    On a 32^3 grid at 2 mm, two overlapping balls of radius 9 voxels, 7 to 11 voxels apart in a
    random direction (seeded): channel "T1" is bright (200) in ball A, channel "T2" bright
    (300) in ball B, both on a noisy background (100, 150; noise sd 10). The label (1,
    "overlap") is where A and B overlap: neither channel alone shows where it is.
    """
    rng = np.random.default_rng(seed)
    centre = np.array(TWO_CHANNEL_GRID, np.float32) / 2 + rng.uniform(-2, 2, 3)
    direction = rng.normal(size=3)
    offset = direction / np.linalg.norm(direction) * rng.uniform(3.5, 5.5)
    in_a, in_b = _ball(centre - offset, 9.0), _ball(centre + offset, 9.0)
    t1 = np.where(in_a, 200.0, 100.0) + rng.normal(0, 10, TWO_CHANNEL_GRID)
    t2 = np.where(in_b, 300.0, 150.0) + rng.normal(0, 10, TWO_CHANNEL_GRID)
    channels = tuple(
        Volume(array.astype(np.float32), TWO_CHANNEL_AFFINE.copy()) for array in (t1, t2)
    )
    labels = Volume((in_a & in_b).astype(np.uint8), TWO_CHANNEL_AFFINE.copy())
    return (channels[0], channels[1]), labels


def write_two_channel_dataset(folder: Path, seeds: Iterable[int]) -> list[str]:
    """An nnU-Net v2 dataset of ``two_channel_phantom`` cases in ``folder``: ``imagesTr/``
    ``twoch_<seed:03d>_0000.nii.gz`` (T1) and ``_0001`` (T2), ``labelsTr/``, and a dataset.json
    with ``channel_names`` ``{"0": "T1", "1": "T2"}``. Returns the case ids, in seed order."""
    folder = Path(folder)
    case_ids = []
    for seed in seeds:
        case_id = f"twoch_{seed:03d}"
        channels, labels = two_channel_phantom(seed)
        for number, channel in enumerate(channels):
            write_nifti(channel, folder / "imagesTr" / f"{case_id}_{number:04d}.nii.gz")
        write_nifti(labels, folder / "labelsTr" / f"{case_id}.nii.gz")
        case_ids.append(case_id)
    metadata = {
        "channel_names": {str(n): name for n, name in enumerate(TWO_CHANNEL_NAMES)},
        "labels": {"background": 0, "overlap": 1},
        "numTraining": len(case_ids),
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(metadata, indent=2))
    return case_ids


NESTED_REGIONS = {"whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]}
"""The regions of ``nested_regions_phantom`` (BraTS-like), painted in the order 1, 2, 3."""
NESTED_RADII = (10.0, 7.0, 4.0)  # voxels: outer shell (1), middle shell (2), core (3)


def nested_regions_phantom(seed: int = 0) -> tuple[Volume, Volume]:
    """``(mr, labels)``: concentric spheres on a 32^3 grid at 2 mm, centre jittered (seeded).

    Label 1 is the outer shell (radius 10 voxels), 2 the middle shell (7), 3 the core (4), so
    the regions of :data:`NESTED_REGIONS` are balls of radius 10, 7 and 4. Intensities 100
    (background), 150, 200, 250 from the outside in, noise sd 10.
    """
    rng = np.random.default_rng(seed)
    centre = np.array(TWO_CHANNEL_GRID, np.float32) / 2 + rng.uniform(-3, 3, 3)
    labels = np.zeros(TWO_CHANNEL_GRID, np.uint8)
    for value, radius in enumerate(NESTED_RADII, start=1):
        labels[_ball(centre, radius)] = value
    image = 100.0 + 50.0 * labels + rng.normal(0, 10, TWO_CHANNEL_GRID)
    return (
        Volume(image.astype(np.float32), TWO_CHANNEL_AFFINE.copy()),
        Volume(labels, TWO_CHANNEL_AFFINE.copy()),
    )


def write_nested_regions_dataset(folder: Path, seeds: Iterable[int]) -> list[str]:
    """An nnU-Net v2 dataset of ``nested_regions_phantom`` cases in ``folder`` (``imagesTr/``
    ``nested_<seed:03d>_0000.nii.gz``, ``labelsTr/``) whose dataset.json declares the regions
    of :data:`NESTED_REGIONS` with ``regions_class_order`` [1, 2, 3]. Returns the case ids."""
    folder = Path(folder)
    case_ids = []
    for seed in seeds:
        case_id = f"nested_{seed:03d}"
        image, labels = nested_regions_phantom(seed)
        write_nifti(image, folder / "imagesTr" / f"{case_id}_0000.nii.gz")
        write_nifti(labels, folder / "labelsTr" / f"{case_id}.nii.gz")
        case_ids.append(case_id)
    metadata = {
        "channel_names": {"0": "T1"},
        "labels": {"background": 0, **NESTED_REGIONS},
        "regions_class_order": [1, 2, 3],
        "numTraining": len(case_ids),
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(metadata, indent=2))
    return case_ids
