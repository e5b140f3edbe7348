"""Read a DICOM SEG back into a label map by hand (frame references and patient geometry).

Independent of highdicom's readers and of medseg's writer: each frame names the source image
it segments; each pixel of that image is mapped to a voxel of the label map's grid through
ImagePositionPatient/ImageOrientationPatient/PixelSpacing (LPS) and the grid's RAS affine.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from pydicom.dataset import Dataset


def seg_frames(seg: Dataset) -> list[tuple[str, int, np.ndarray]]:
    """(referenced source SOP instance, segment number, boolean mask) of every SEG frame."""
    pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns).astype(bool)
    frames = []
    for item, mask in zip(seg.PerFrameFunctionalGroupsSequence, pixels, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        frames.append((str(source.ReferencedSOPInstanceUID), int(number), mask))
    return frames


def value_of_segment(seg: Dataset, names: dict[int, str]) -> dict[int, int]:
    """Segment number -> label value, matched by segment label and ``names`` (value -> name)."""
    value_of_name = {name: value for value, name in names.items()}
    return {int(s.SegmentNumber): value_of_name[s.SegmentLabel] for s in seg.SegmentSequence}


def pixel_voxels(source: Dataset, affine_ras: np.ndarray) -> tuple[np.ndarray, ...]:
    """Voxel indices (i, j, k), each (rows, columns), of every pixel of a source image."""
    rows, columns = np.meshgrid(np.arange(source.Rows), np.arange(source.Columns), indexing="ij")
    orientation = np.array(source.ImageOrientationPatient, float)
    row_spacing, column_spacing = (float(v) for v in source.PixelSpacing)
    lps = (
        np.array(source.ImagePositionPatient, float)[:, None, None]
        + orientation[:3, None, None] * column_spacing * columns
        + orientation[3:, None, None] * row_spacing * rows
    )
    ras = lps * np.array([-1.0, -1.0, 1.0])[:, None, None]
    voxel = np.einsum("ab,brc->arc", np.linalg.inv(affine_ras)[:3, :3], ras)
    voxel += np.linalg.inv(affine_ras)[:3, 3, None, None]
    assert np.abs(voxel - np.rint(voxel)).max() < 1e-3
    return tuple(np.rint(voxel).astype(int))


def rebuild_label_map(
    seg: Dataset,
    sources: Iterable[Dataset],
    names: dict[int, str],
    shape: tuple[int, ...],
    affine_ras: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The label map a SEG encodes on a grid, and how many frames claim each voxel."""
    voxels = {str(s.SOPInstanceUID): pixel_voxels(s, affine_ras) for s in sources}
    value_of = value_of_segment(seg, names)
    rebuilt = np.zeros(shape, np.int64)
    covered = np.zeros(shape, np.int64)
    for uid, number, mask in seg_frames(seg):
        i, j, k = voxels[uid]
        rebuilt[i[mask], j[mask], k[mask]] = value_of[number]
        covered[i[mask], j[mask], k[mask]] += 1
    return rebuilt, covered
