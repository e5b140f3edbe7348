"""A full-size CT phantom with many labelled structures, for the clinical-scale benchmarks
(``bench/large_volume.py``) and their reduced-size tests.

The demo phantom's anatomy (``medseg.demo.phantom``: body, subcutaneous fat, liver, spleen,
kidneys, spine) at adult size on a 512 x 512 x 400 axial grid of 0.8 x 0.8 x 1.0 mm, plus small
ellipsoids on a jittered lattice inside the body, each its own structure with its own HU value,
up to ``structures`` labelled structures (117 by default, as many as TotalSegmentator's label
set). The anatomy lives in world millimetres, so a coarser grid over the same field of view
(the tests') samples the same objects. Each shape is evaluated inside its bounding box only and
the body slab by slab, so rendering holds the image (float32) and the label map, nothing of
the grid's size per structure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.demo.phantom import (
    HU_MAX,
    HU_MIN,
    PHANTOM_LABELS,
    SPINE_LABEL,
    TISSUE_HU,
    Organ,
    draw_body,
    grid_affine,
    grid_directions,
    random_rotation,
    sample_anatomy,
)
from medseg.demo.shapes import Ellipsoid, EllipticTube
from medseg.errors import PhantomError
from medseg.preprocess.config import BorderWeightOptions, LabelResampling, NormalizationScheme
from medseg.preprocess.plan import Configuration, NormalizationPlan, Plan
from medseg.volume import Volume

LARGE_SHAPE = (512, 512, 400)
LARGE_SPACING_MM = (0.8, 0.8, 1.0)
LARGE_STRUCTURES = 117

_SCALE = 2.2  # the demo anatomy (a child-sized abdomen) to adult size
_LATTICE_MM = 28.0  # lattice step of the small structures
_SMALL_SEMI_AXES_MM = (5.0, 9.0)
_CLEARANCE_MM = 12.0  # between a small structure's centre and an organ's bounding sphere
_SLAB = 32  # slices of the body rendered at a time


@dataclass(frozen=True)
class LargeAnatomy:
    """All random choices of one large phantom, in world RAS millimetres.

    Attributes:
        center_mm: centre of the body and of the grid.
        body_semi_axes_mm: body cross-section semi-axes (x, y); the body spans the grid in z.
        fat_mm: thickness of the subcutaneous fat layer.
        structures: every labelled ellipsoid (the organs, then the small structures).
        spine: the vertebral column (label 5), a bone tube around the canal.
        label_names: label value -> name, background included.
    """

    center_mm: np.ndarray
    body_semi_axes_mm: tuple[float, float]
    fat_mm: float
    structures: tuple[Organ, ...]
    spine: EllipticTube
    label_names: dict[int, str]


def large_anatomy(
    seed: int,
    *,
    structures: int = LARGE_STRUCTURES,
    half_extent_mm: tuple[float, float, float] = (204.8, 204.8, 200.0),
) -> LargeAnatomy:
    """Draw the anatomy of large phantom ``seed`` with ``structures`` labelled structures in
    a field of view of ``2 * half_extent_mm`` around the centre.

    Raises:
        PhantomError: fewer than 5 or more than 255 structures, or more than the body holds.
    """
    if not 5 <= structures <= 255:
        raise PhantomError(f"structures must be 5 to 255 (uint8 labels), got {structures}")
    demo = sample_anatomy(seed)
    centre = np.zeros(3)
    organs = [
        Organ(
            label=organ.label,
            hu=organ.hu,
            shape=Ellipsoid(
                center_mm=(organ.shape.center_mm - demo.center_mm) * _SCALE,
                semi_axes_mm=organ.shape.semi_axes_mm * _SCALE,
                rotation=organ.shape.rotation,
                cut_mm=None if organ.shape.cut_mm is None else organ.shape.cut_mm * _SCALE,
            ),
        )
        for organ in demo.organs
    ]
    spine = EllipticTube(
        center_mm=(demo.spine.center_mm - demo.center_mm) * _SCALE,
        outer_mm=(demo.spine.outer_mm[0] * _SCALE, demo.spine.outer_mm[1] * _SCALE),
        inner_mm=(demo.spine.inner_mm[0] * _SCALE, demo.spine.inner_mm[1] * _SCALE),
        half_length_mm=half_extent_mm[2],
        rotation=np.eye(3),
    )
    body = (demo.body_semi_axes_mm[0] * _SCALE * 1.15, demo.body_semi_axes_mm[1] * _SCALE * 1.15)
    fat = demo.fat_mm * _SCALE
    rng = np.random.default_rng([seed, 2])
    small = _small_structures(
        rng,
        count=structures - len(PHANTOM_LABELS) + 1,
        inner=(body[0] - fat, body[1] - fat),
        half_length_mm=half_extent_mm[2],
        balls=[(o.shape.center_mm, float(max(o.shape.semi_axes_mm))) for o in organs],
        tube=(spine.center_mm[:2], float(max(spine.outer_mm))),
    )
    names = dict(PHANTOM_LABELS)
    names.update({organ.label: f"structure_{organ.label:03d}" for organ in small})
    return LargeAnatomy(centre, body, fat, (*organs, *small), spine, names)


def _small_structures(
    rng: np.random.Generator,
    *,
    count: int,
    inner: tuple[float, float],
    half_length_mm: float,
    balls: list[tuple[np.ndarray, float]],
    tube: tuple[np.ndarray, float],
) -> list[Organ]:
    """``count`` small ellipsoids at lattice points inside the body, clear of the organs'
    bounding ``balls`` (centre, radius) and of the spine's ``tube`` (x-y centre, radius)
    running the whole length."""
    reach = _SMALL_SEMI_AXES_MM[1] + 6.0
    steps = [np.arange(-limit + reach, limit - reach + 1e-6, _LATTICE_MM) for limit in inner]
    along = np.arange(-half_length_mm + reach, half_length_mm - reach + 1e-6, _LATTICE_MM)
    candidates = []
    for x in steps[0]:
        for y in steps[1]:
            if (x / (inner[0] - reach)) ** 2 + (y / (inner[1] - reach)) ** 2 > 1.0:
                continue
            for z in along:
                point = np.array([x, y, z])
                near_tube = np.linalg.norm(point[:2] - tube[0]) < tube[1] + _CLEARANCE_MM
                near_ball = any(
                    np.linalg.norm(point - centre) < radius + _CLEARANCE_MM
                    for centre, radius in balls
                )
                if not (near_tube or near_ball):
                    candidates.append(point)
    if len(candidates) < count:
        raise PhantomError(
            f"the body holds {len(candidates)} small structures in this field of view, "
            f"{count} asked"
        )
    chosen = rng.permutation(len(candidates))[:count]
    small = []
    for number, index in enumerate(sorted(chosen)):
        jitter = rng.uniform(-3.0, 3.0, 3)
        shape = Ellipsoid(
            center_mm=candidates[index] + jitter,
            semi_axes_mm=rng.uniform(*_SMALL_SEMI_AXES_MM, size=3),
            rotation=random_rotation(rng, max_deg=30.0),
        )
        hu = int(rng.integers(-60, 250))
        small.append(Organ(label=len(PHANTOM_LABELS) + number, hu=hu, shape=shape))
    return small


def render_large(
    anatomy: LargeAnatomy, *, affine_ras: np.ndarray, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Noiseless HU image (float32) and label map (uint8) of ``anatomy`` on an axial grid."""
    image = np.full(shape, TISSUE_HU["air"], dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    for first in range(0, shape[2], _SLAB):  # slab by slab: the coordinates stay small
        slab = (slice(None), slice(None), slice(first, min(first + _SLAB, shape[2])))
        sub_affine, _ = _sub_grid(affine_ras, shape, slab)
        semi_axes, fat = anatomy.body_semi_axes_mm, anatomy.fat_mm
        draw_body(image[slab], sub_affine, anatomy.center_mm, semi_axes, fat)
    for organ in anatomy.structures:
        box = _box(affine_ras, shape, organ.shape.center_mm, float(max(organ.shape.semi_axes_mm)))
        if box is None:
            continue
        sub_affine, sub_shape = _sub_grid(affine_ras, shape, box)
        inside = organ.shape.contains(sub_affine, sub_shape)
        image[box][inside] = organ.hu
        labels[box][inside] = organ.label
    spine = anatomy.spine
    radius = float(max(spine.outer_mm))
    box = _box(affine_ras, shape, spine.center_mm, radius, half_length_mm=spine.half_length_mm)
    if box is not None:
        sub_affine, sub_shape = _sub_grid(affine_ras, shape, box)
        wall, lumen = spine.masks(sub_affine, sub_shape)
        image[box][wall] = TISSUE_HU["bone"]
        image[box][lumen] = TISSUE_HU["spinal_canal"]
        labels[box][wall] = SPINE_LABEL
    return image, labels


def _box(
    affine_ras: np.ndarray,
    shape: tuple[int, int, int],
    centre: np.ndarray,
    radius: float,
    *,
    half_length_mm: float | None = None,
) -> tuple[slice, slice, slice] | None:
    """Voxel box holding a ball of ``radius`` around ``centre`` (a tube along z with
    ``half_length_mm``); None when it misses the grid."""
    extent = np.array([radius, radius, radius if half_length_mm is None else half_length_mm])
    corners = np.array([centre + extent * (2 * np.array(s) - 1) for s in np.ndindex(2, 2, 2)])
    inverse = np.linalg.inv(affine_ras)
    voxels = (inverse[:3, :3] @ corners.T).T + inverse[:3, 3]
    low = np.maximum(np.floor(voxels.min(axis=0)).astype(int), 0)
    high = np.minimum(np.ceil(voxels.max(axis=0)).astype(int) + 1, shape)
    if np.any(high <= low):
        return None
    return (slice(low[0], high[0]), slice(low[1], high[1]), slice(low[2], high[2]))


def _sub_grid(
    affine_ras: np.ndarray, shape: tuple[int, int, int], box: tuple[slice, ...]
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The affine and shape of the part ``box`` of a grid."""
    starts = [s.indices(n)[0] for s, n in zip(box, shape, strict=True)]
    stops = [s.indices(n)[1] for s, n in zip(box, shape, strict=True)]
    sub = affine_ras.copy()
    sub[:3, 3] = affine_ras[:3, :3] @ np.asarray(starts, float) + affine_ras[:3, 3]
    return sub, (stops[0] - starts[0], stops[1] - starts[1], stops[2] - starts[2])


def make_large_phantom(
    *,
    seed: int = 0,
    shape: tuple[int, int, int] = LARGE_SHAPE,
    spacing_mm: tuple[float, float, float] = LARGE_SPACING_MM,
    structures: int = LARGE_STRUCTURES,
    noise_sigma_hu: float = 20.0,
) -> tuple[Volume, Volume, dict[int, str]]:
    """Full-size CT (HU, int16), its label map (uint8) and label names, on an axial LPS grid
    centred on the body; the anatomy fills the field of view of ``shape`` x ``spacing_mm``.

    Raises:
        PhantomError: non-positive shape or spacing, or a structure count the body cannot hold.
    """
    if len(shape) != 3 or min(shape) < 1 or min(spacing_mm) <= 0:
        raise PhantomError(f"shape {shape} and spacing {spacing_mm} must be positive")
    half = (
        shape[0] * spacing_mm[0] / 2,
        shape[1] * spacing_mm[1] / 2,
        shape[2] * spacing_mm[2] / 2,
    )
    anatomy = large_anatomy(seed, structures=structures, half_extent_mm=half)
    directions = grid_directions("LPS", (0.0, 0.0, 0.0))
    affine = grid_affine(directions, spacing_mm, shape, center_mm=anatomy.center_mm)
    image, labels = render_large(anatomy, affine_ras=affine, shape=shape)
    noise = np.random.default_rng([seed, 1])
    for first in range(0, shape[2], _SLAB):
        part = image[:, :, first : first + _SLAB]
        part += noise.normal(0.0, noise_sigma_hu, size=part.shape).astype(np.float32)
    ct = np.clip(np.rint(image), HU_MIN, HU_MAX).astype(np.int16)
    del image
    metadata = {"modality": "CT", "source_format": "phantom", "phantom_seed": int(seed)}
    return (
        Volume(ct, affine, dict(metadata)),
        Volume(labels, affine.copy(), dict(metadata)),
        anatomy.label_names,
    )


def phantom_ct_plan(
    label_names: dict[int, str],
    patch_size: list[int],
    *,
    target_spacing_mm: float = 1.5,
    pool_strides: list[list[int]] | None = None,
) -> Plan:
    """A CT plan for the phantoms without planning a dataset: ``target_spacing_mm`` isotropic,
    one 3D configuration of ``patch_size``, the CT scheme (clip to -1000..1000 HU, then
    (HU - 0) / 500), no crop to the non-zero region (a CT's air is not zero), ``label_names``
    as the classes."""
    ct = NormalizationPlan(
        scheme=NormalizationScheme.CT, clip_low=-1000.0, clip_high=1000.0, mean=0.0, std=500.0
    )
    return Plan(
        medseg_version="phantom",
        manifest_sha256="",
        modality="CT",
        label_names=dict(label_names),
        target_spacing=[target_spacing_mm] * 3,
        median_shape=list(patch_size),
        normalization=ct,
        channel_names=["CT"],
        channel_normalization=[ct],
        image_resample_order=1,
        label_resampling=LabelResampling.NEAREST,
        crop_to_nonzero=False,
        foreground_fraction=0.33,
        border_weights=BorderWeightOptions(),
        configurations={
            "3d": Configuration(
                name="3d",
                patch_size=list(patch_size),
                batch_size=2,
                pool_strides=pool_strides or [[2, 2, 2]] * 3,
            )
        },
        fingerprint={},
        seed=0,
    )
