"""Slice geometry of a DICOM series: sort along the normal, validate spacing, detect tilt.

All positions here are DICOM patient coordinates (LPS, mm). Conversion to RAS happens once,
when the affine is built (``affine_lps_to_ras``).

Rules (documented in README "DICOM geometry"):

* Slices are sorted by their position along the slice normal (cross product of the two
  ImageOrientationPatient vectors), never by InstanceNumber.
* Two different images at the same position are an error (``DuplicateSlicePositionError``).
* Steps between slices equal to within ``SPACING_RTOL`` of the regular step form a regular
  volume. An isolated step that is a whole multiple (>= 2) of the regular step means slices
  are missing: ``MissingSlicesError`` naming the positions. Runs of differing steps (e.g. a GE
  head CT with 2.5 mm through the posterior fossa and 5 mm above) are a variable-spacing
  acquisition: the volume is resampled to equidistant slices at the smallest step, as dcm2niix
  does, and the correction is recorded.
* Gantry tilt is detected from the positions (in-plane drift of successive slice origins), not
  from the GantryDetectorTilt tag, which is often missing. Tilted stacks are resampled in-plane
  onto an orthogonal grid (each slice shifted by its drift), as dcm2niix does, and the
  correction is recorded. Drifts below ``TILT_TOLERANCE_PX`` of a pixel over the whole stack
  are rounding noise and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medseg.errors import DicomSeriesError, DuplicateSlicePositionError, MissingSlicesError

SPACING_RTOL = 0.02
SPACING_ATOL_MM = 0.01
TILT_TOLERANCE_PX = 0.05
MAX_EQUALIZE_RATIO = 10.0


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    """Unit normal of a slice from its six ImageOrientationPatient values."""
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    return normal / np.linalg.norm(normal)


def orthonormal_orientation(orientation: np.ndarray, *, source: str) -> np.ndarray:
    """Return the two direction cosines as unit vectors; error if they are not perpendicular.

    Raises:
        DicomSeriesError: the direction cosines are not unit vectors or not perpendicular.
    """
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    row_norm, col_norm = np.linalg.norm(row), np.linalg.norm(col)
    if row_norm < 1e-6 or col_norm < 1e-6:
        raise DicomSeriesError(
            source, f"ImageOrientationPatient {list(orientation)} has a zero vector"
        )
    row, col = row / row_norm, col / col_norm
    if abs(float(row @ col)) > 1e-3:
        raise DicomSeriesError(
            source, f"ImageOrientationPatient vectors are not perpendicular (dot {row @ col:.4f})"
        )
    return np.concatenate([row, col])


@dataclass(frozen=True)
class StackGeometry:
    """Where each sorted slice sits: distance along the normal and in-plane drift (mm)."""

    order: np.ndarray  # indices that sort the input slices along the normal
    distance_mm: np.ndarray  # sorted positions along the normal, relative to the first slice
    drift_row_mm: np.ndarray  # in-plane drift along the row direction (i axis), per sorted slice
    drift_col_mm: np.ndarray  # in-plane drift along the column direction (j axis)
    origin_lps: np.ndarray  # ImagePositionPatient of the first sorted slice


@dataclass
class SliceLayout:
    """The regular slice grid a series will be stored on, and how to get there."""

    spacing_mm: float
    target_distance_mm: np.ndarray  # positions along the normal of the output slices
    tilted: bool
    equalized: bool
    corrections: list[str] = field(default_factory=list)


def measure_stack(positions: np.ndarray, orientation: np.ndarray) -> StackGeometry:
    """Sort slice positions (N x 3, LPS) along the normal and measure their in-plane drift."""
    positions = np.asarray(positions, float)
    row, col = orientation[:3], orientation[3:]
    normal = slice_normal(orientation)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    sorted_positions = positions[order]
    offsets = sorted_positions - sorted_positions[0]
    return StackGeometry(
        order=order,
        distance_mm=offsets @ normal,
        drift_row_mm=offsets @ row,
        drift_col_mm=offsets @ col,
        origin_lps=sorted_positions[0],
    )


def _close(value: np.ndarray | float, reference: np.ndarray | float) -> np.ndarray:
    return np.abs(np.asarray(value) - reference) <= SPACING_ATOL_MM + SPACING_RTOL * reference


def plan_slice_layout(
    stack: StackGeometry,
    *,
    pixel_spacing_mm: tuple[float, float],
    single_slice_spacing_mm: float,
    source: str,
    slice_labels: list[str],
) -> SliceLayout:
    """Decide the output slice grid of a sorted stack, or raise a specific error.

    Args:
        stack: sorted slice geometry from ``measure_stack``.
        pixel_spacing_mm: (row spacing, column spacing) used to judge in-plane drift.
        single_slice_spacing_mm: slice spacing to use when there is only one slice.
        source: names the series in error messages.
        slice_labels: one label (file name) per sorted slice, for error messages.

    Raises:
        DuplicateSlicePositionError: different images at one slice position.
        MissingSlicesError: slices missing from an otherwise regular series.
        DicomSeriesError: slices that do not make one regular grid.
    """
    distances = stack.distance_mm
    if len(distances) == 1:
        return SliceLayout(single_slice_spacing_mm, distances.copy(), tilted=False, equalized=False)
    steps = np.diff(distances)
    duplicate = np.flatnonzero(steps <= SPACING_ATOL_MM)
    if duplicate.size:
        k = int(duplicate[0])
        count = int(np.sum(np.abs(distances - distances[k]) <= SPACING_ATOL_MM))
        raise DuplicateSlicePositionError(
            source,
            f"{count} different images at the same slice position, e.g. {slice_labels[k]} and "
            f"{slice_labels[k + 1]}: not a single volume "
            "(repeated acquisitions or several volumes in one series)",
        )
    regular = float(np.min(steps))
    corrections: list[str] = []
    tilted = _is_tilted(stack, pixel_spacing_mm)
    if tilted:
        angle = _tilt_angle_deg(stack)
        corrections.append(
            f"gantry tilt of {angle:.2f} degrees detected from slice positions: slices shifted "
            "in-plane onto an orthogonal grid (linear interpolation)"
        )
    if np.all(_close(steps, regular)):
        spacing = float((distances[-1] - distances[0]) / (len(distances) - 1))
        return SliceLayout(
            spacing, distances.copy(), tilted, equalized=False, corrections=corrections
        )
    _raise_if_slices_missing(steps, regular, distances, slice_labels=slice_labels, source=source)
    if float(np.max(steps)) > MAX_EQUALIZE_RATIO * regular:
        raise DicomSeriesError(
            source,
            f"slice steps vary from {regular:.3f} to {np.max(steps):.3f} mm: too irregular to "
            "resample into one volume",
        )
    count = int(np.floor((distances[-1] - distances[0]) / regular + 1e-3)) + 1
    targets = distances[0] + regular * np.arange(count)
    corrections.append(
        f"variable slice spacing ({regular:.3f} to {np.max(steps):.3f} mm): resampled to "
        f"{count} equidistant slices at {regular:.3f} mm (linear interpolation)"
    )
    return SliceLayout(regular, targets, tilted, equalized=True, corrections=corrections)


def _raise_if_slices_missing(
    steps: np.ndarray,
    regular: float,
    distances: np.ndarray,
    *,
    slice_labels: list[str],
    source: str,
) -> None:
    irregular = ~_close(steps, regular)
    multiples = steps / regular
    whole = _close(multiples, np.round(multiples)) & (np.round(multiples) >= 2)
    for k in np.flatnonzero(irregular):
        neighbours_regular = (k == 0 or not irregular[k - 1]) and (
            k == len(steps) - 1 or not irregular[k + 1]
        )
        if whole[k] and neighbours_regular:
            missing = round(float(multiples[k])) - 1
            raise MissingSlicesError(
                source,
                f"{missing} slice(s) missing between {slice_labels[k]} and {slice_labels[k + 1]}: "
                f"step of {steps[k]:.3f} mm where the series steps {regular:.3f} mm "
                f"(positions {distances[k]:.3f} and {distances[k + 1]:.3f} mm along the normal)",
            )


def _is_tilted(stack: StackGeometry, pixel_spacing_mm: tuple[float, float]) -> bool:
    drift = np.hypot(stack.drift_row_mm, stack.drift_col_mm)
    return bool(np.max(drift) > TILT_TOLERANCE_PX * min(pixel_spacing_mm))


def _tilt_angle_deg(stack: StackGeometry) -> float:
    total_drift = np.hypot(stack.drift_row_mm[-1], stack.drift_col_mm[-1])
    return float(np.degrees(np.arctan2(total_drift, stack.distance_mm[-1])))


def affine_lps_to_ras(
    *,
    orientation: np.ndarray,
    pixel_spacing_mm: tuple[float, float],
    slice_spacing_mm: float,
    origin_lps: np.ndarray,
) -> np.ndarray:
    """Voxel (i=column, j=row, k=slice) to RAS affine of an orthogonal slice stack.

    ``pixel_spacing_mm`` is DICOM PixelSpacing order: (row spacing, column spacing).
    """
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row * pixel_spacing_mm[1]
    affine_lps[:3, 1] = col * pixel_spacing_mm[0]
    affine_lps[:3, 2] = slice_normal(orientation) * slice_spacing_mm
    affine_lps[:3, 3] = origin_lps
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps
