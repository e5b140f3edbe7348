"""Seeded synthetic abdominal CT phantom (HU image + label map) and a demo dataset on disk.

The anatomy is defined in world RAS millimetres and then sampled on a voxel grid: every voxel's
centre is mapped through the grid's affine and the shapes are evaluated there. The same seed
therefore gives the same anatomy whatever the spacing, axis order or obliquity of the grid, and
organ volumes in mL do not depend on the grid beyond voxelisation error.

Choosing random parameters (``sample_anatomy``) is separate from rendering them
(``render_phantom``), so tests can compare rendered volumes with the analytic ones.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from medseg.demo.dicom_writer import (
    FileNaming,
    TransferSyntax,
    to_dicom_slice_order,
    write_dicom_series,
)
from medseg.demo.shapes import Ellipsoid, EllipticTube, local_coordinates
from medseg.errors import PhantomError
from medseg.io.atomic import write_json_atomic
from medseg.io.nifti import write_nifti
from medseg.volume import Volume

logger = logging.getLogger(__name__)

PHANTOM_LABELS: dict[int, str] = {
    0: "background",
    1: "liver",
    2: "spleen",
    3: "kidney_left",
    4: "kidney_right",
    5: "spine",
}
SPINE_LABEL = 5

# Mean attenuation per tissue (HU), portal-venous-phase-like contrasts.
TISSUE_HU: dict[str, int] = {
    "air": -1000,
    "fat": -90,
    "soft_tissue": 40,
    "liver": 60,
    "spleen": 48,
    "kidney": 150,
    "bone": 700,
    "spinal_canal": 15,
}

# Half extents (x, y, z) of the world box around the anatomy centre that holds every organ
# for any seed; grids built by ``covering_shape`` contain it.
PHANTOM_HALF_EXTENT_MM = (72.0, 56.0, 64.0)
HU_MIN, HU_MAX = -1024, 3071

_AXIS_CODES: dict[str, tuple[float, float, float]] = {
    "R": (1.0, 0.0, 0.0),
    "L": (-1.0, 0.0, 0.0),
    "A": (0.0, 1.0, 0.0),
    "P": (0.0, -1.0, 0.0),
    "S": (0.0, 0.0, 1.0),
    "I": (0.0, 0.0, -1.0),
}


@dataclass(frozen=True)
class Organ:
    """One labelled structure: label value, mean HU and shape."""

    label: int
    hu: int
    shape: Ellipsoid


@dataclass(frozen=True)
class Anatomy:
    """All random choices of one phantom, in world RAS millimetres.

    Attributes:
        center_mm: centre of the body (table position), RAS mm.
        body_semi_axes_mm: body cross-section semi-axes (x, y); the body is infinite along z.
        fat_mm: thickness of the subcutaneous fat layer.
        organs: soft-tissue organs (disjoint by construction).
        spine: the vertebral column (label ``SPINE_LABEL``), a bone tube around the canal.
    """

    center_mm: np.ndarray
    body_semi_axes_mm: tuple[float, float]
    fat_mm: float
    organs: tuple[Organ, ...]
    spine: EllipticTube

    def volume_ml(self, label: int) -> float:
        """Analytic volume of ``label`` in mL."""
        if label == SPINE_LABEL:
            return self.spine.volume_ml
        for organ in self.organs:
            if organ.label == label:
                return organ.shape.volume_ml
        raise PhantomError(f"label {label} is not a phantom structure")


# Nominal organ layout relative to the body centre: (label, HU, centre, semi-axes), in mm.
# Centres are far enough apart that the random jitter below never makes organs touch (over
# seeds 0-299 the closest two organs were 3.2 mm apart, and no organ left the box below).
_ORGAN_LAYOUT = (
    (1, TISSUE_HU["liver"], (24.0, 10.0, 22.0), (25.0, 21.0, 28.0)),
    (2, TISSUE_HU["spleen"], (-37.0, -4.0, 24.0), (10.0, 16.0, 19.0)),
    (3, TISSUE_HU["kidney"], (-33.0, -14.0, -24.0), (10.0, 8.0, 20.0)),
    (4, TISSUE_HU["kidney"], (33.0, -14.0, -30.0), (10.0, 8.0, 20.0)),
)
_CENTER_JITTER_MM = 3.0
_AXIS_SCALE_RANGE = (0.9, 1.1)
_MAX_TILT_DEG = 10.0


def sample_anatomy(seed: int) -> Anatomy:
    """Draw the anatomy of phantom ``seed``: table position, organ sizes, positions, rotations."""
    rng = np.random.default_rng(seed)
    center = np.array(
        [rng.uniform(-5, 5), rng.uniform(-20, 0), rng.uniform(-400, -100)], dtype=np.float64
    )
    body = (rng.uniform(64, 68), rng.uniform(48, 52))
    organs = []
    for label, hu, nominal_center, nominal_axes in _ORGAN_LAYOUT:
        semi_axes = np.asarray(nominal_axes) * rng.uniform(*_AXIS_SCALE_RANGE, size=3)
        cut = float(rng.uniform(0.4, 0.7) * semi_axes[0]) if label == 1 else None
        shape = Ellipsoid(
            center_mm=center + nominal_center + rng.uniform(-1, 1, 3) * _CENTER_JITTER_MM,
            semi_axes_mm=semi_axes,
            rotation=random_rotation(rng, max_deg=_MAX_TILT_DEG),
            cut_mm=cut,
        )
        organs.append(Organ(label=label, hu=hu, shape=shape))
    spine = EllipticTube(
        center_mm=center + np.array([rng.uniform(-1.5, 1.5), -24.0 + rng.uniform(-1.5, 1.5), 0.0]),
        outer_mm=(rng.uniform(11, 13), rng.uniform(9, 10.5)),
        inner_mm=(rng.uniform(4.5, 5.5), rng.uniform(4.0, 5.0)),
        half_length_mm=rng.uniform(50, 56),
        rotation=random_rotation(rng, max_deg=4.0),
    )
    return Anatomy(center, body, float(rng.uniform(4, 7)), tuple(organs), spine)


def random_rotation(rng: np.random.Generator, *, max_deg: float) -> np.ndarray:
    """A rotation matrix of up to ``max_deg`` about each world axis."""
    angles = rng.uniform(-max_deg, max_deg, size=3)
    return Rotation.from_euler("xyz", angles, degrees=True).as_matrix()


def grid_directions(orientation: str, rotation_deg: tuple[float, float, float]) -> np.ndarray:
    """3x3 matrix of unit axis directions (columns, RAS) for an axis code and small rotation.

    Args:
        orientation: three-letter code such as ``"LPS"`` (i towards Left, j Posterior, k
            Superior), ``"RAS"`` or ``"LIP"`` (coronal).
        rotation_deg: extrinsic rotations about world x, y, z applied after the axis code,
            for oblique grids.

    Raises:
        PhantomError: the code is not three distinct axes from R/L, A/P, S/I.
    """
    code = orientation.upper()
    if len(code) != 3 or any(c not in _AXIS_CODES for c in code):
        raise PhantomError(f"orientation {orientation!r} is not a three-letter code of R/L/A/P/S/I")
    directions = np.array([_AXIS_CODES[c] for c in code]).T
    if not np.isclose(abs(np.linalg.det(directions)), 1.0):
        raise PhantomError(f"orientation {orientation!r} uses an axis twice")
    return Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix() @ directions


def covering_shape(
    directions: np.ndarray, spacing_mm: tuple[float, float, float]
) -> tuple[int, int, int]:
    """Smallest grid shape whose box around the anatomy centre holds the whole phantom."""
    half = np.abs(directions.T) @ np.asarray(PHANTOM_HALF_EXTENT_MM)
    counts = np.ceil(2 * half / np.asarray(spacing_mm)).astype(int) + 1
    return (int(counts[0]), int(counts[1]), int(counts[2]))


def make_phantom(
    *,
    seed: int,
    shape: tuple[int, int, int] | None = None,
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 2.5),
    orientation: str = "LPS",
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
    noise_sigma_hu: float = 20.0,
    smoothing_sigma_vox: float = 0.6,
) -> tuple[Volume, Volume]:
    """Synthetic abdominal CT (HU, int16) and its label map (uint8) on the same grid.

    Args:
        seed: chooses the anatomy (``sample_anatomy(seed)``) and the noise.
        shape: grid shape; None gives the smallest grid that holds the whole phantom
            (97 x 76 x 53 voxels at the default spacing and orientation).
        spacing_mm: voxel size along i, j, k.
        orientation: axis code of the grid (see ``grid_directions``); ``"LPS"`` is the usual
            axial DICOM storage order.
        rotation_deg: small rotations about world x, y, z for an oblique grid.
        noise_sigma_hu: standard deviation of the added Gaussian noise.
        smoothing_sigma_vox: Gaussian blur (voxels) of the noiseless image (partial volume).

    Returns:
        ``(ct, labels)``: label values are the keys of ``PHANTOM_LABELS``.

    Raises:
        PhantomError: bad orientation code, non-positive spacing or shape.
    """
    anatomy = sample_anatomy(seed)
    directions = grid_directions(orientation, rotation_deg)
    if min(spacing_mm) <= 0:
        raise PhantomError(f"spacing_mm must be positive, got {spacing_mm}")
    if shape is None:
        shape = covering_shape(directions, spacing_mm)
    if len(shape) != 3 or min(shape) < 1:
        raise PhantomError(f"shape must be three positive sizes, got {shape}")
    affine = grid_affine(directions, spacing_mm, shape, center_mm=anatomy.center_mm)
    clean, labels = render_phantom(anatomy, affine_ras=affine, shape=shape)
    noise_rng = np.random.default_rng([seed, 1])
    image = (
        ndimage.gaussian_filter(clean, smoothing_sigma_vox) if smoothing_sigma_vox > 0 else clean
    )
    image += noise_rng.normal(0.0, noise_sigma_hu, size=shape).astype(np.float32)
    ct = np.clip(np.rint(image), HU_MIN, HU_MAX).astype(np.int16)
    metadata = {"modality": "CT", "source_format": "phantom", "phantom_seed": int(seed)}
    return Volume(ct, affine, dict(metadata)), Volume(labels, affine.copy(), dict(metadata))


def grid_affine(
    directions: np.ndarray,
    spacing_mm: tuple[float, float, float],
    shape: tuple[int, int, int],
    *,
    center_mm: np.ndarray,
) -> np.ndarray:
    """Voxel-to-RAS affine whose grid centre sits at ``center_mm``."""
    affine = np.eye(4)
    affine[:3, :3] = directions * np.asarray(spacing_mm, dtype=np.float64)[None, :]
    affine[:3, 3] = center_mm - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def render_phantom(
    anatomy: Anatomy, *, affine_ras: np.ndarray, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Noiseless HU image (float32) and label map (uint8) of ``anatomy`` on a grid."""
    image = np.full(shape, TISSUE_HU["air"], dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    draw_body(image, affine_ras, anatomy.center_mm, anatomy.body_semi_axes_mm, anatomy.fat_mm)
    for organ in anatomy.organs:
        mask = organ.shape.contains(affine_ras, shape)
        image[mask] = organ.hu
        labels[mask] = organ.label
    wall, lumen = anatomy.spine.masks(affine_ras, shape)
    image[wall] = TISSUE_HU["bone"]
    image[lumen] = TISSUE_HU["spinal_canal"]
    labels[wall] = SPINE_LABEL
    return image, labels


def draw_body(
    image: np.ndarray,
    affine_ras: np.ndarray,
    center_mm: np.ndarray,
    semi_axes_mm: tuple[float, float],
    fat_mm: float,
) -> None:
    """Paint the body (an elliptic cylinder along world z around ``center_mm``: fat, then soft
    tissue ``fat_mm`` inside) into ``image`` on the grid ``affine_ras``."""
    shape = (image.shape[0], image.shape[1], image.shape[2])
    u, v, _ = local_coordinates(affine_ras, shape, center=center_mm, rotation=np.eye(3))
    a, b = semi_axes_mm
    image[(u / a) ** 2 + (v / b) ** 2 <= 1.0] = TISSUE_HU["fat"]
    inner_a, inner_b = a - fat_mm, b - fat_mm
    image[(u / inner_a) ** 2 + (v / inner_b) ** 2 <= 1.0] = TISSUE_HU["soft_tissue"]


@dataclass(frozen=True)
class _CaseLayout:
    """Grid and on-disk layout of one demo case."""

    orientation: str
    spacing_mm: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    transfer_syntax: TransferSyntax
    file_names: FileNaming
    name_prefix: str
    name_suffix: str


# Cycled over the demo cases: axial/coronal/sagittal, flipped and oblique grids, every transfer
# syntax, and file names with ".dcm", without extension, UIDs only, and with spaces.
_TS = TransferSyntax
_CASE_LAYOUTS = tuple(
    _CaseLayout(*row)
    for row in (
        ("LPS", (0.8, 0.8, 1.5), (0, 0, 0), _TS.EXPLICIT_LE, "numbered", "IM", ".dcm"),
        ("RAS", (1.2, 1.2, 2.0), (0, 0, 0), _TS.RLE_LOSSLESS, "numbered", "IM", ""),
        ("LPS", (1.0, 1.0, 2.5), (4, 0, -3), _TS.JPEGLS_LOSSLESS, "uid", "", ""),
        ("LIP", (1.4, 1.6, 3.0), (0, 0, 0), _TS.EXPLICIT_LE, "numbered", "CT image ", ".dcm"),
        ("PIR", (1.1, 1.3, 2.0), (0, 2, 0), _TS.JPEG2000_LOSSLESS, "numbered", "IM", ".dcm"),
        ("RPI", (1.5, 1.5, 3.0), (0, 3, 2), _TS.EXPLICIT_LE, "numbered", "", ""),
    )
)


@dataclass(frozen=True)
class DemoCase:
    """Where one demo case lives on disk and how its grid was built.

    ``orientation`` and ``spacing_mm`` describe the acquisition grid of the DICOM series
    (i = column, j = row, k = slice); the NIfTI files hold the same voxels reoriented to the
    closest-to-RAS axis order.
    """

    case_id: str
    dicom_dir: Path
    dicom_files: tuple[Path, ...]
    image_path: Path
    label_path: Path
    orientation: str
    spacing_mm: tuple[float, float, float]
    transfer_syntax: TransferSyntax


@dataclass(frozen=True)
class DemoDataset:
    """A generated demo dataset: its cases and the label names of its label maps."""

    root: Path
    cases: tuple[DemoCase, ...]
    label_names: dict[int, str]
    summary_path: Path


def generate_demo_dataset(
    out_dir: Path, *, n_cases: int = 6, seed: int = 0, prefix: str = "phantom"
) -> DemoDataset:
    """Write ``n_cases`` phantom cases as DICOM series, NIfTI images and NIfTI label maps.

    Cases are named ``<prefix>_000``, ``<prefix>_001``...; a held-out set uses another seed
    and prefix (the demo's ``heldout_*`` cases).

    Layout: ``dicom/<case_id>/`` (one series per case, see ``_CASE_LAYOUTS`` for the mix of
    file names and transfer syntaxes), ``nifti/<case_id>.nii.gz`` (image, HU) and
    ``labels/<case_id>.nii.gz`` (label map), plus ``dataset.json`` listing them. The NIfTI files
    are on the grid ingest builds from the series (``medseg.io.dicom``: slices sorted along the
    normal, then ``Volume.to_closest_ras``), so a label map and the ingested scan share shape
    and affine. Files are byte-identical for a given ``seed``; a case folder from an earlier
    run is replaced.

    Raises:
        PhantomError: ``n_cases`` is not positive.
    """
    if n_cases < 1:
        raise PhantomError(f"n_cases must be at least 1, got {n_cases}")
    out_dir = Path(out_dir)
    case_seeds = np.random.SeedSequence(seed).generate_state(n_cases)
    cases = []
    for index, case_seed in enumerate(case_seeds):
        layout = _CASE_LAYOUTS[index % len(_CASE_LAYOUTS)]
        case_id = f"{prefix}_{index:03d}"
        cases.append(_write_case(out_dir, case_id=case_id, seed=int(case_seed), layout=layout))
        logger.info("demo case %s written (%s, %s)", case_id, layout.orientation, layout.spacing_mm)
    summary_path = out_dir / "dataset.json"
    write_json_atomic(summary_path, _summary(out_dir, cases, seed=seed))
    return DemoDataset(out_dir, tuple(cases), dict(PHANTOM_LABELS), summary_path)


def _write_case(out_dir: Path, *, case_id: str, seed: int, layout: _CaseLayout) -> DemoCase:
    ct, labels = make_phantom(
        seed=seed,
        spacing_mm=layout.spacing_mm,
        orientation=layout.orientation,
        rotation_deg=layout.rotation_deg,
    )
    ct, labels = to_dicom_slice_order(ct), to_dicom_slice_order(labels)
    dicom_dir = out_dir / "dicom" / case_id
    if dicom_dir.exists():
        shutil.rmtree(dicom_dir)
    files = write_dicom_series(
        ct,
        dicom_dir,
        series_description=f"phantom {layout.orientation} {layout.transfer_syntax.value}",
        patient_id=f"FAKE-{case_id}",
        transfer_syntax=layout.transfer_syntax,
        file_names=layout.file_names,
        name_prefix=layout.name_prefix,
        name_suffix=layout.name_suffix,
        uid_seed=f"medseg-demo-{seed}",
    )
    image_path = write_nifti(ct.to_closest_ras(), out_dir / "nifti" / f"{case_id}.nii.gz")
    label_path = write_nifti(labels.to_closest_ras(), out_dir / "labels" / f"{case_id}.nii.gz")
    return DemoCase(
        case_id=case_id,
        dicom_dir=dicom_dir,
        dicom_files=tuple(files),
        image_path=image_path,
        label_path=label_path,
        orientation=ct.orientation,
        spacing_mm=layout.spacing_mm,
        transfer_syntax=layout.transfer_syntax,
    )


def _summary(out_dir: Path, cases: list[DemoCase], *, seed: int) -> dict[str, object]:
    return {
        "seed": seed,
        "labels": {str(k): v for k, v in PHANTOM_LABELS.items()},
        "cases": [
            {
                "case_id": case.case_id,
                "dicom_dir": case.dicom_dir.relative_to(out_dir).as_posix(),
                "image": case.image_path.relative_to(out_dir).as_posix(),
                "label": case.label_path.relative_to(out_dir).as_posix(),
                "orientation": case.orientation,
                "spacing_mm": [round(s, 6) for s in case.spacing_mm],
                "transfer_syntax": case.transfer_syntax.value,
            }
            for case in cases
        ],
    }
