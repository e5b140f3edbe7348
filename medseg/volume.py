"""The one in-memory scan type every stage speaks.

Axis convention (used by every reader and writer in medseg):

* ``Volume.array`` is indexed ``array[i, j, k]`` (plus optional trailing non-spatial axes).
  For a DICOM series, ``i`` is the column index within a slice (along the first
  ImageOrientationPatient vector), ``j`` the row index (second vector) and ``k`` the slice
  index along the slice normal. This is the NIfTI/nibabel voxel order, so NIfTI files are
  read and written without transposing.
* ``Volume.affine_ras`` is a 4x4 float64 matrix that maps voxel indices ``(i, j, k, 1)`` to
  world coordinates in millimetres in RAS+ (x grows towards the patient's Right, y towards
  Anterior, z towards Superior), the NIfTI convention. DICOM's LPS coordinates are converted
  once, in ``medseg.io.dicom``, by negating x and y.
* Tensors built from volumes are channel-first: ``(C, i, j, k)``.

Ingested volumes are stored in the closest-to-RAS voxel order (``to_closest_ras``): the
indices increase towards R, A and S respectively. That is a permutation/flip of axes, never a
resampling, so it loses nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import nibabel.orientations as nio
import numpy as np

from medseg.errors import GeometryMismatchError, InvalidAffineError, VolumeShapeError


def validate_affine(affine: np.ndarray, *, source: str = "affine") -> np.ndarray:
    """Return ``affine`` as float64 4x4 after checking it is finite, homogeneous and invertible.

    Raises:
        InvalidAffineError: naming ``source`` and what is wrong.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise InvalidAffineError(f"{source}: affine must be 4x4, got shape {affine.shape}")
    if not np.all(np.isfinite(affine)):
        raise InvalidAffineError(f"{source}: affine contains NaN or infinite values")
    if not np.allclose(affine[3], [0.0, 0.0, 0.0, 1.0]):
        raise InvalidAffineError(
            f"{source}: affine last row is {affine[3].tolist()}, not [0,0,0,1]"
        )
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing <= 0) or abs(np.linalg.det(affine[:3, :3])) < 1e-12 * np.prod(spacing):
        raise InvalidAffineError(f"{source}: affine is singular (zero spacing or collinear axes)")
    return affine


@dataclass(eq=False)
class Volume:
    """A scan or label map: voxel array, RAS affine in millimetres, non-PHI metadata.

    Args:
        array: voxels indexed ``[i, j, k, ...]``; at least 3 dimensions.
        affine_ras: 4x4 voxel-index to RAS-millimetre matrix.
        metadata: non-identifying facts about the scan (modality, manufacturer, ...).
    """

    array: np.ndarray
    affine_ras: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim < 3:
            raise VolumeShapeError(
                f"a Volume needs at least 3 dimensions, got shape {self.array.shape}"
            )
        self.affine_ras = validate_affine(self.affine_ras)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the voxel array."""
        return tuple(int(n) for n in self.array.shape)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along i, j, k in millimetres (column norms of the affine)."""
        norms = np.linalg.norm(self.affine_ras[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def orientation(self) -> str:
        """Three-letter axis code, e.g. ``"RAS"``, of the direction each index increases towards."""
        return "".join(nio.aff2axcodes(self.affine_ras))

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (1 mL = 1000 mm^3)."""
        return float(abs(np.linalg.det(self.affine_ras[:3, :3])) / 1000.0)

    def with_array(self, array: np.ndarray) -> Volume:
        """A new volume with the same geometry and metadata but other voxels of the same shape."""
        if array.shape[:3] != self.array.shape[:3]:
            raise GeometryMismatchError(
                f"spatial shape {array.shape[:3]} differs from {self.array.shape[:3]}"
            )
        return Volume(array, self.affine_ras.copy(), dict(self.metadata))

    def crop(self, box: Sequence[tuple[int, int]]) -> Volume:
        """The voxels of ``box`` (``(start, stop)`` per spatial axis), with the affine of its
        first voxel: every kept voxel stays where it was in scanner space."""
        region = tuple(slice(int(start), int(stop)) for start, stop in box)
        affine = self.affine_ras.copy()
        affine[:3, 3] = self.affine_ras[:3, :3] @ [start for start, _ in box] + affine[:3, 3]
        return Volume(self.array[region], affine, dict(self.metadata))

    def to_closest_ras(self) -> Volume:
        """Permute/flip axes (no resampling) so indices increase towards R, A and S."""
        ornt = nio.io_orientation(self.affine_ras)
        ras = nio.axcodes2ornt(("R", "A", "S"))
        transform = nio.ornt_transform(ornt, ras)
        if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
            return self
        array = nio.apply_orientation(self.array, transform)
        affine = self.affine_ras @ nio.inv_ornt_aff(transform, self.array.shape[:3])
        return Volume(array, affine, dict(self.metadata))

    def to_orientation_of(self, reference_affine: np.ndarray) -> Volume:
        """Permute/flip axes (no resampling) so they run like ``reference_affine``'s axes.

        Inverse of ``to_closest_ras`` when given the affine the volume had before it.
        """
        current = nio.io_orientation(self.affine_ras)
        wanted = nio.io_orientation(np.asarray(reference_affine, float))
        transform = nio.ornt_transform(current, wanted)
        array = nio.apply_orientation(self.array, transform)
        affine = self.affine_ras @ nio.inv_ornt_aff(transform, self.array.shape[:3])
        return Volume(array, affine, dict(self.metadata))

    def same_grid(self, other: Volume, *, atol_mm: float = 1e-3) -> bool:
        """True when both volumes have the same spatial shape and affines within ``atol_mm``."""
        return self.shape[:3] == other.shape[:3] and bool(
            np.allclose(self.affine_ras, other.affine_ras, atol=atol_mm)
        )
