"""What differs between the voxel grids of two volumes, in words and millimetres."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from medseg.volume import Volume

_TOLERANCE_MM = 1e-3  # as Volume.same_grid


def grid_difference(first: Volume, second: Volume, *, names: tuple[str, str]) -> str:
    """Why ``first`` and ``second`` (called ``names``) are not on one voxel grid.

    Names every property that differs (shape, spacing, origin with its distance, axis
    directions) and, for context, those that agree.

    Example:
        ``"prediction a.nii.gz and reference b.nii.gz are on different voxel grids: origin
        (-72, -57, 0) vs (-42, -57, 0) mm, 30 mm apart (same shape 49x39x33 voxels, spacing
        3x3x4 mm)"``
    """
    differences, same = [], []
    shapes = [_join(volume.shape[:3], "x") for volume in (first, second)]
    if shapes[0] != shapes[1]:
        differences.append(f"shape {shapes[0]} vs {shapes[1]} voxels")
    else:
        same.append(f"shape {shapes[0]} voxels")
    spacings = [np.array(volume.spacing_mm) for volume in (first, second)]
    spacing_text = [_join(spacing, "x") for spacing in spacings]
    if np.allclose(spacings[0], spacings[1], atol=_TOLERANCE_MM):
        same.append(f"spacing {spacing_text[0]} mm")
    else:
        differences.append(f"spacing {spacing_text[0]} vs {spacing_text[1]} mm")
    origins = [volume.affine_ras[:3, 3] for volume in (first, second)]
    distance = float(np.linalg.norm(origins[0] - origins[1]))
    if distance > _TOLERANCE_MM:
        differences.append(
            f"origin ({_join(origins[0], ', ')}) vs ({_join(origins[1], ', ')}) mm, "
            f"{distance:.4g} mm apart"
        )
    directions = [
        volume.affine_ras[:3, :3] / spacing
        for volume, spacing in zip((first, second), spacings, strict=True)
    ]
    # Axes differ when turning them moves a voxel step by more than the tolerance.
    if not np.allclose(
        directions[0] * spacings[0], directions[1] * spacings[0], atol=_TOLERANCE_MM
    ):
        cosine = float(np.min(np.sum(directions[0] * directions[1], axis=0)))
        angle = float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))
        codes = [volume.orientation for volume in (first, second)]
        axes = f"axes {codes[0]} vs {codes[1]}" if codes[0] != codes[1] else "axes"
        differences.append(f"{axes} turned up to {angle:.3g} degrees apart")
    if not differences:  # every part within the tolerance (the grids may even be the same)
        worst = float(np.max(np.abs(first.affine_ras - second.affine_ras)))
        differences.append(f"affines differ by up to {worst:.3g} mm")
    context = f" (same {', '.join(same)})" if same else ""
    return (
        f"{names[0]} and {names[1]} are on different voxel grids: {'; '.join(differences)}{context}"
    )


def _join(values: Iterable[float] | np.ndarray, separator: str) -> str:
    return separator.join(f"{float(value):.4g}" for value in values)
