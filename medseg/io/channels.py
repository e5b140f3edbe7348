"""Several co-registered scans of one case (MR T1, T2, FLAIR...) as one 4D volume.

nnU-Net and MSD store the channels of a case as ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``
... (channel numbers on four digits); medseg keeps them as one ``Volume`` with the channels on
the last axis, ``(X, Y, Z, C)``. Channels are stacked only when each is on channel 0's voxel
grid: the same shape and affines within ``CHANNEL_ATOL_MM``. Nothing is resampled, so a
misregistered channel is refused rather than silently blended into a wrong case.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medseg.errors import ChannelsError
from medseg.io.formats import volume_stem
from medseg.volume import Volume

CHANNEL_ATOL_MM = 1e-3
CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def channel_number(path: str | Path) -> int | None:
    """The nnU-Net channel number of a file name (``case_0001.nii.gz`` -> 1), or None."""
    match = CHANNEL_SUFFIX.match(volume_stem(path))
    return int(match["channel"]) if match else None


def channel_case(path: str | Path) -> str | None:
    """The case an nnU-Net channel file belongs to (``case_0001.nii.gz`` -> ``case``), or None."""
    match = CHANNEL_SUFFIX.match(volume_stem(path))
    return match["case"] if match else None


def _grid_difference(volume: Volume, reference: Volume) -> str | None:
    if volume.array.ndim != 3:
        return f"a channel file must be 3D, got shape {volume.shape}"
    if volume.shape != reference.shape[:3]:
        return f"shape {volume.shape} differs from channel 0's {reference.shape[:3]}"
    worst = float(np.max(np.abs(volume.affine_ras - reference.affine_ras)))
    if worst > CHANNEL_ATOL_MM:
        return f"affine differs from channel 0's by up to {worst:.4g} mm (> {CHANNEL_ATOL_MM} mm)"
    return None


def stack_channels(channels: Sequence[tuple[str, Volume]]) -> Volume:
    """One ``(X, Y, Z, C)`` volume in closest-RAS voxel order from 3D channel volumes, each
    given with the name of its file; geometry and metadata are channel 0's. Channels may store
    their axes in different orders as long as they cover the same grid.

    Raises:
        ChannelsError: a channel is not 3D or not co-registered with channel 0 (names its
            file and what differs).
    """
    canonical = [(name, volume.to_closest_ras()) for name, volume in channels]
    first_name, first = canonical[0]
    for name, volume in canonical:
        difference = _grid_difference(volume, first)
        if difference:
            raise ChannelsError(name, f"not co-registered with {first_name}: {difference}")
    array = np.stack([volume.array for _, volume in canonical], axis=-1)
    return Volume(array, first.affine_ras.copy(), dict(first.metadata))
