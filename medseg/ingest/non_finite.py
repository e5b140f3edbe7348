"""Scans with NaN or infinite voxels: refused, or repaired on request and recorded.

A network given one NaN voxel returns NaN probabilities over every window that sees it, and
the argmax of NaN is background: an empty segmentation that looks like a healthy result.
So ``screen_non_finite`` (called by ``ScanTask.read`` for ingest, predict and batch alike)
refuses such a scan by default, naming it and the count ("3 NaN and 1 +Inf voxels of
63,063"). ``NonFinitePolicy.REPLACE_MIN`` replaces them with the scan's lowest finite value
instead: the background of every common modality (air in CT, no signal in MR, no uptake in
PET), where zero would be soft tissue in CT. The replacement is recorded in the volume's
metadata (``non_finite_replaced``) and its ``corrections``, which ingest sidecars, predict
reports and batch results carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from medseg.errors import NonFiniteVoxelsError
from medseg.volume import Volume


class NonFinitePolicy(StrEnum):
    """What to do with a scan holding NaN or infinite voxels."""

    ERROR = "error"
    REPLACE_MIN = "replace-min"


@dataclass(frozen=True)
class NonFiniteCount:
    """How many voxels of a scan are NaN, +Inf and -Inf, out of ``total``."""

    nan: int
    positive_infinite: int
    negative_infinite: int
    total: int

    @property
    def non_finite(self) -> int:
        """All voxels that are not finite numbers."""
        return self.nan + self.positive_infinite + self.negative_infinite

    def describe(self) -> str:
        """E.g. ``"3 NaN and 1 +Inf voxels of 63,063"``."""
        kinds = [
            f"{count:,} {name}"
            for count, name in (
                (self.nan, "NaN"),
                (self.positive_infinite, "+Inf"),
                (self.negative_infinite, "-Inf"),
            )
            if count
        ]
        listed = kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " and " + kinds[-1]
        noun = "voxel" if self.non_finite == 1 else "voxels"
        return f"{listed} {noun} of {self.total:,}"


def count_non_finite(array: np.ndarray) -> NonFiniteCount:
    """Count NaN, +Inf and -Inf values of ``array`` (all zero for integer arrays)."""
    if not np.issubdtype(array.dtype, np.floating) or np.isfinite(array).all():
        return NonFiniteCount(0, 0, 0, int(array.size))  # one pass in the usual case
    nan = int(np.count_nonzero(np.isnan(array)))
    positive = int(np.count_nonzero(np.isposinf(array)))
    negative = int(np.count_nonzero(np.isneginf(array)))
    return NonFiniteCount(nan, positive, negative, int(array.size))


def screen_non_finite(volume: Volume, *, policy: NonFinitePolicy, where: str) -> Volume:
    """``volume`` unchanged when every voxel is finite; else refused or repaired per ``policy``.

    Args:
        volume: the scan as read.
        policy: ``ERROR`` refuses the scan; ``REPLACE_MIN`` puts the lowest finite value in
            place of every non-finite voxel and records it in the metadata.
        where: how messages name the scan.

    Raises:
        NonFiniteVoxelsError: a non-finite voxel with ``ERROR``; no finite voxel at all.
    """
    count = count_non_finite(volume.array)
    if not count.non_finite:
        return volume
    policy = NonFinitePolicy(policy)
    if count.non_finite == count.total:
        raise NonFiniteVoxelsError(
            where, f"every voxel is non-finite ({count.describe()}): there is no image"
        )
    if policy is NonFinitePolicy.ERROR:
        verb = "is" if count.non_finite == 1 else "are"
        raise NonFiniteVoxelsError(
            where,
            f"{count.describe()} {verb} not finite: the scan is refused (--non-finite "
            "replace-min replaces them by its lowest finite value)",
        )
    array = volume.array
    finite = np.isfinite(array)
    value = array[finite].min()
    repaired = volume.with_array(np.where(finite, array, value).astype(array.dtype, copy=False))
    repaired.metadata["non_finite_replaced"] = {
        "nan": count.nan,
        "positive_infinite": count.positive_infinite,
        "negative_infinite": count.negative_infinite,
        "voxels": count.total,
        "value": float(value),
    }
    repaired.metadata["corrections"] = [
        *volume.metadata.get("corrections", []),
        f"{count.describe()} replaced by {float(value):g} (the scan's lowest finite value)",
    ]
    return repaired
