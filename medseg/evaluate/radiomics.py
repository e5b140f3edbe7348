"""Radiomics features per structure: IBSI-defined shape and first-order features, named and
computed as PyRadiomics computes them with its defaults.

PyRadiomics is the reference implementation but has no wheel for Python 3.11 and its source
distributions do not build under current pip (docs/inference.md, "Radiomics"), so the features
are computed here with numpy, scipy and scikit-image, under PyRadiomics' names
(``original_shape_MeshVolume``...) and settings: the scan's own grid and values (no
resampling, HU for CT), ``binWidth`` 25 for Entropy and Uniformity (bins aligned on 0),
``voxelArrayShift`` 0, Kurtosis not reduced by 3 (IBSI's excess kurtosis + 3). The surface is
the mask's marching cubes at 0.5 (``medseg.io.meshes.mask_mesh``, the mesh ``--meshes``
writes); MeshVolume is its signed tetrahedron sum, Maximum3DDiameter the largest distance
between its vertices, the axis lengths ``4 sqrt(lambda)`` of the principal components of the
voxel centres (mm). tests/evaluate/test_radiomics.py checks the values against PyRadiomics'.

Every structure is measured inside its bounding box (one ``scipy.ndimage.find_objects``
pass), so a CT with a hundred structures costs little more than its voxels once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.spatial import ConvexHull

from medseg.evaluate.volumes import structure_regions
from medseg.io.meshes import mask_mesh
from medseg.volume import Volume

SHAPE_FEATURES = (
    "MeshVolume",
    "VoxelVolume",
    "SurfaceArea",
    "SurfaceVolumeRatio",
    "Sphericity",
    "Maximum3DDiameter",
    "MajorAxisLength",
    "MinorAxisLength",
    "LeastAxisLength",
    "Elongation",
    "Flatness",
)
FIRSTORDER_FEATURES = (
    "Energy",
    "TotalEnergy",
    "Entropy",
    "Minimum",
    "10Percentile",
    "90Percentile",
    "Maximum",
    "Mean",
    "Median",
    "InterquartileRange",
    "Range",
    "MeanAbsoluteDeviation",
    "RobustMeanAbsoluteDeviation",
    "RootMeanSquared",
    "Skewness",
    "Kurtosis",
    "Variance",
    "Uniformity",
)
FEATURE_NAMES = tuple(f"original_shape_{name}" for name in SHAPE_FEATURES) + tuple(
    f"original_firstorder_{name}" for name in FIRSTORDER_FEATURES
)
"""Every feature's name, as PyRadiomics names it, in the order of the CSV's columns."""

_DIAMETER_ROWS = 256  # hull vertices per block of the pairwise distances (bounded memory)


@dataclass(frozen=True)
class RadiomicsSettings:
    """PyRadiomics' extraction settings that the features here depend on (its defaults).

    Attributes:
        bin_width: width of the intensity bins of Entropy and Uniformity (``binWidth``).
        voxel_array_shift: added to the intensities in Energy, TotalEnergy and RootMeanSquared
            (``voxelArrayShift``).
    """

    bin_width: float = 25.0
    voxel_array_shift: float = 0.0

    def record(self) -> dict[str, object]:
        """The settings as written beside the features (PyRadiomics' parameter names)."""
        return {
            "binWidth": self.bin_width,
            "voxelArrayShift": self.voxel_array_shift,
            "resampledPixelSpacing": None,
            "image": "the scan's own grid and values (HU for CT), channel 0",
            "mesh": "marching cubes of the mask at 0.5 (scikit-image), LPS mm",
            "definitions": "IBSI, as PyRadiomics 3.0.1 (Kurtosis not reduced by 3)",
        }


def structure_radiomics(
    labels: Volume,
    image: Volume,
    *,
    label_names: Mapping[int, str],
    settings: RadiomicsSettings = RadiomicsSettings(),
) -> dict[str, dict[str, float]]:
    """The shape and first-order features (:data:`FEATURE_NAMES`) of every named structure > 0,
    on the scan's channel 0; an absent structure has every feature NaN.

    Raises:
        GeometryMismatchError: ``image`` is not on the label map's grid.
    """
    features = {}
    for name, region in structure_regions(labels, image, label_names=label_names):
        if region is None:
            features[name] = dict.fromkeys(FEATURE_NAMES, float("nan"))
            continue
        origin = [s.start for s in region.box]
        shape = shape_features(region.mask, origin=origin, affine_ras=labels.affine_ras)
        voxel_mm3 = labels.voxel_volume_ml * 1000.0
        first = firstorder_features(region.intensities, voxel_mm3=voxel_mm3, settings=settings)
        features[name] = {f"original_shape_{k}": v for k, v in shape.items()} | {
            f"original_firstorder_{k}": v for k, v in first.items()
        }
    return features


def shape_features(
    mask: np.ndarray, *, origin: list[int], affine_ras: np.ndarray
) -> dict[str, float]:
    """The shape features (:data:`SHAPE_FEATURES`) of a non-empty boolean ``mask`` cut out of a
    scan at voxel index ``origin``, in millimetres through the scan's ``affine_ras``."""
    mesh = mask_mesh(mask, origin, affine_ras)
    volume, area = mesh.volume_mm3, mesh.area_mm2
    linear = affine_ras[:3, :3]
    centres = np.argwhere(mask).astype(np.float64) @ linear.T
    centred = centres - centres.mean(axis=0)
    covariance = centred.T @ centred / len(centres)
    least, minor, major = np.clip(np.linalg.eigvalsh(covariance), 0.0, None)
    return {
        "MeshVolume": volume,
        "VoxelVolume": float(len(centres) * abs(np.linalg.det(linear))),
        "SurfaceArea": area,
        "SurfaceVolumeRatio": area / volume,
        "Sphericity": float((36 * np.pi * volume**2) ** (1 / 3) / area),
        "Maximum3DDiameter": maximum_diameter(mesh.vertices_mm.astype(np.float64)),
        "MajorAxisLength": float(4 * np.sqrt(major)),
        "MinorAxisLength": float(4 * np.sqrt(minor)),
        "LeastAxisLength": float(4 * np.sqrt(least)),
        "Elongation": float(np.sqrt(minor / major)) if major > 0 else float("nan"),
        "Flatness": float(np.sqrt(least / major)) if major > 0 else float("nan"),
    }


def maximum_diameter(points: np.ndarray) -> float:
    """The largest distance between two of ``points`` (N, 3): found among the vertices of their
    convex hull, in blocks, so a large organ's mesh needs no N x N matrix."""
    hull = points[ConvexHull(points).vertices]
    largest = 0.0
    for start in range(0, len(hull), _DIAMETER_ROWS):
        block = hull[start : start + _DIAMETER_ROWS]
        squared = ((block[:, None, :] - hull[None, :, :]) ** 2).sum(axis=-1)
        largest = max(largest, float(squared.max()))
    return float(np.sqrt(largest))


def firstorder_features(
    intensities: np.ndarray, *, voxel_mm3: float, settings: RadiomicsSettings = RadiomicsSettings()
) -> dict[str, float]:
    """The first-order features (:data:`FIRSTORDER_FEATURES`) of a structure's non-empty
    ``intensities`` (1-D), whose voxels have ``voxel_mm3`` each."""
    x = np.asarray(intensities, np.float64)
    shifted = x + settings.voxel_array_shift
    energy = float((shifted**2).sum())
    p10, p25, median, p75, p90 = np.percentile(x, [10, 25, 50, 75, 90])
    mean = x.mean()
    deviations = x - mean
    m2, m3, m4 = ((deviations**k).mean() for k in (2, 3, 4))
    robust = x[(x >= p10) & (x <= p90)]
    # PyRadiomics' fixed bin width: bins [k W, (k+1) W), counted where voxels fall
    _, counts = np.unique(np.floor(x / settings.bin_width), return_counts=True)
    p = counts / len(x)
    return {
        "Energy": energy,
        "TotalEnergy": energy * voxel_mm3,
        "Entropy": float(-(p * np.log2(p + np.spacing(1))).sum()),
        "Minimum": float(x.min()),
        "10Percentile": float(p10),
        "90Percentile": float(p90),
        "Maximum": float(x.max()),
        "Mean": float(mean),
        "Median": float(median),
        "InterquartileRange": float(p75 - p25),
        "Range": float(x.max() - x.min()),
        "MeanAbsoluteDeviation": float(np.abs(deviations).mean()),
        "RobustMeanAbsoluteDeviation": float(np.abs(robust - robust.mean()).mean()),
        "RootMeanSquared": float(np.sqrt(energy / len(x))),
        "Skewness": float(m3 / m2**1.5) if m2 > 0 else 0.0,  # a flat region: 0, as PyRadiomics
        "Kurtosis": float(m4 / m2**2) if m2 > 0 else 0.0,
        "Variance": float(m2),
        "Uniformity": float((p**2).sum()),
    }
