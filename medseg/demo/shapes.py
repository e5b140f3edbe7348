"""Solid shapes of the phantom, defined in world RAS millimetres and sampled on voxel grids.

Each shape is evaluated in its own local frame: one affine composed from the grid's
voxel-to-RAS affine and the shape's placement, so any grid (spacing, axis order, obliquity)
samples the same physical object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def local_coordinates(
    affine_ras: np.ndarray,
    shape: tuple[int, int, int],
    *,
    center: np.ndarray,
    rotation: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinates (mm, float32) of every voxel centre in a shape's local frame.

    Composes voxel -> RAS -> local into one affine and evaluates it by broadcasting the three
    index vectors, so no (N, 3) coordinate array is ever built.
    """
    to_local = rotation.T @ affine_ras[:3, :3]
    offset = rotation.T @ (affine_ras[:3, 3] - center)
    i = np.arange(shape[0], dtype=np.float32)[:, None, None]
    j = np.arange(shape[1], dtype=np.float32)[None, :, None]
    k = np.arange(shape[2], dtype=np.float32)[None, None, :]
    coords = []
    for row, shift in zip(to_local.astype(np.float32), offset.astype(np.float32), strict=True):
        coords.append((row[0] * i + row[1] * j) + (row[2] * k + shift))
    return coords[0], coords[1], coords[2]


@dataclass(frozen=True)
class Ellipsoid:
    """A solid ellipsoid, optionally with a flat face where local ``x < -cut_mm``.

    Attributes:
        center_mm: centre in RAS mm.
        semi_axes_mm: semi-axes (a, b, c) along the local axes.
        rotation: 3x3 matrix whose columns are the local axes in RAS.
        cut_mm: distance of the cutting plane from the centre along local -x (None: no cut).
    """

    center_mm: np.ndarray
    semi_axes_mm: np.ndarray
    rotation: np.ndarray
    cut_mm: float | None = None

    @property
    def volume_ml(self) -> float:
        """Analytic volume in mL (the ellipsoid minus the cap beyond the cutting plane)."""
        a, b, c = (float(v) for v in self.semi_axes_mm)
        volume = 4.0 / 3.0 * np.pi * a * b * c
        if self.cut_mm is not None:
            h = self.cut_mm
            volume -= np.pi * b * c * (a - h) ** 2 * (2 * a + h) / (3 * a**2)
        return float(volume / 1000.0)

    def contains(self, affine_ras: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
        """Boolean mask of the voxels of grid (``affine_ras``, ``shape``) inside the shape."""
        u, v, w = local_coordinates(
            affine_ras, shape, center=self.center_mm, rotation=self.rotation
        )
        a, b, c = self.semi_axes_mm
        inside = (u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2 <= 1.0
        if self.cut_mm is not None:
            inside &= u >= -self.cut_mm
        return inside


@dataclass(frozen=True)
class EllipticTube:
    """A finite elliptic cylinder along local z with a concentric elliptic lumen.

    Attributes:
        center_mm: centre in RAS mm.
        outer_mm: outer semi-axes (a, b) in the local xy plane.
        inner_mm: lumen semi-axes (a, b); the lumen is not part of the tube.
        half_length_mm: half the length along local z.
        rotation: 3x3 matrix whose columns are the local axes in RAS.
    """

    center_mm: np.ndarray
    outer_mm: tuple[float, float]
    inner_mm: tuple[float, float]
    half_length_mm: float
    rotation: np.ndarray

    @property
    def volume_ml(self) -> float:
        """Analytic volume of the wall in mL."""
        area = np.pi * (self.outer_mm[0] * self.outer_mm[1] - self.inner_mm[0] * self.inner_mm[1])
        return float(area * 2 * self.half_length_mm / 1000.0)

    def masks(
        self, affine_ras: np.ndarray, shape: tuple[int, int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Boolean masks (wall, lumen) on the grid (``affine_ras``, ``shape``)."""
        u, v, w = local_coordinates(
            affine_ras, shape, center=self.center_mm, rotation=self.rotation
        )
        along = np.abs(w) <= self.half_length_mm
        in_outer = (u / self.outer_mm[0]) ** 2 + (v / self.outer_mm[1]) ** 2 <= 1.0
        in_inner = (u / self.inner_mm[0]) ** 2 + (v / self.inner_mm[1]) ** 2 <= 1.0
        return in_outer & ~in_inner & along, in_inner & along
