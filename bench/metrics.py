"""Benchmark: per-structure Dice, HD95 and NSD on a many-label volume, medseg vs MONAI, same run.

The volume is synthetic (``--shape``, default 256 x 256 x 128, ``--spacing`` 0.8 x 0.8 x 2.5 mm):
an ellipsoidal body cut into ``--labels`` structures (default 120) by a Voronoi partition in
millimetres (random seeds, every voxel takes the label of its nearest seed), background outside.
The prediction is the reference shifted by one voxel along the first axis, with a fraction of
boundary voxels relabelled to a neighbour's label and, for one structure in ten, a 12-voxel
cube of its label pasted at a random place (so some HD95 values are large).

Both tools start from the two integer label maps in memory (numpy arrays; MONAI gets
``torch.from_numpy`` views) and end with one value per structure 1..L. Timed, alternating in
each repeat so both share cache conditions and whatever else runs on the machine (the load
average is printed):

* medseg Dice: ``confusion_matrix`` (one bincount) + ``dice_from_confusion``.
* medseg surface: ``surface_metrics`` (HD95 and NSD at ``--tolerance-mm``, and ASSD as well,
  which MONAI is not asked for).
* MONAI Dice, label map: ``DiceMetric(include_background=False, num_classes=L + 1)`` on the
  B1HWD label maps, MONAI's route that needs no one-hot tensor.
* MONAI one-hot: ``monai.networks.utils.one_hot`` of both maps (float32, B x C x HWD); then
  ``DiceMetric(include_background=False)`` and
  ``HausdorffDistanceMetric(include_background=False, percentile=95)`` and
  ``SurfaceDiceMetric(class_thresholds=[tolerance] * n, include_background=False)`` (NSD) with
  the spacing on those tensors. To bound memory (121 float32 channels of 256 x 256 x 128 are
  4 GB per map) the labels go through in chunks of ``--monai-chunk``: each chunk's labels are
  mapped to 1..n, everything else to 0 (a background channel that ``include_background=False``
  skips), which gives MONAI the same per-label values; the remapping is counted in the one-hot
  time. ``--monai-chunk 0`` converts all labels at once.

Ratios (MONAI / medseg, > 1 means medseg is faster), medians of ``--repeats``:

* Dice only: the faster MONAI Dice route (label map, or one-hot conversion + DiceMetric)
  against medseg Dice.
* HD95 only: MONAI one-hot + HausdorffDistanceMetric against ``surface_metrics``.
* Dice + HD95: MONAI one-hot + DiceMetric + HausdorffDistanceMetric against medseg Dice +
  ``surface_metrics``.
* Dice + HD95 + NSD: the same plus MONAI's SurfaceDiceMetric (medseg's ``surface_metrics`` gives
  all three in one pass).

Values are checked equal: Dice, HD95 and NSD to 1e-6 (relative, and absolute below 1).
Goal (issue 17): >= 50x faster for Dice + HD95 + NSD, values equal.

    .venv/bin/python bench/metrics.py [--labels 120] [--shape 256,256,128] [--repeats 3]
        [--spacing 0.8,0.8,2.5] [--monai-chunk 30] [--tolerance-mm 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDiceMetric
from monai.networks.utils import one_hot
from scipy import ndimage

from medseg.evaluate.metrics import confusion_matrix, dice_from_confusion
from medseg.evaluate.surface import surface_metrics

SPEED_GOAL = 50.0
TOLERANCE = 1e-6
BOUNDARY_RELABEL_FRACTION = 0.3
BLOB_EVERY = 10
BLOB_SIZE = 12  # voxels per side: enough surface (> 5 %) to move a structure's HD95
T = TypeVar("T")


@dataclass
class Timings:
    """Seconds per repeat of every timed step."""

    medseg_dice: list[float] = field(default_factory=list)
    medseg_surface: list[float] = field(default_factory=list)
    monai_dice_label_map: list[float] = field(default_factory=list)
    monai_one_hot: list[float] = field(default_factory=list)
    monai_dice_one_hot: list[float] = field(default_factory=list)
    monai_hd95: list[float] = field(default_factory=list)
    monai_nsd: list[float] = field(default_factory=list)


def synthesize(
    shape: tuple[int, int, int], labels: int, spacing_mm: tuple[float, ...], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A Voronoi-partitioned ellipsoid (reference) and a perturbed copy (prediction)."""
    rng = np.random.default_rng(seed)
    dtype = np.min_scalar_type(labels)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    body = sum(
        ((axis - (n - 1) / 2) / (0.48 * n)) ** 2 for axis, n in zip(grid, shape, strict=True)
    )
    body = body <= 1.0
    seeds = np.zeros(shape, dtype)
    seeds.flat[rng.choice(np.flatnonzero(body), size=labels, replace=False)] = np.arange(
        1, labels + 1
    )
    nearest = ndimage.distance_transform_edt(
        seeds == 0, sampling=spacing_mm, return_distances=False, return_indices=True
    )
    reference = seeds[tuple(nearest)]
    del nearest
    reference[~body] = 0

    prediction = np.roll(reference, 1, axis=0)
    for axis in range(len(shape)):
        neighbour = np.roll(prediction, 1, axis=axis)
        relabel = (prediction != neighbour) & (rng.random(shape) < BOUNDARY_RELABEL_FRACTION)
        prediction[relabel] = neighbour[relabel]
    for label in range(1, labels + 1, BLOB_EVERY):
        corner = [int(rng.integers(0, n - BLOB_SIZE)) for n in shape]
        prediction[tuple(slice(c, c + BLOB_SIZE) for c in corner)] = label
    return prediction, reference


def timed(function: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[float, T]:
    """Wall-clock seconds of one call, and its result."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def medseg_dice(prediction: np.ndarray, reference: np.ndarray, labels: int) -> np.ndarray:
    """Dice of labels 1..L from one confusion matrix."""
    return dice_from_confusion(confusion_matrix(prediction, reference, labels + 1))[1:]


def medseg_surface(
    prediction: np.ndarray,
    reference: np.ndarray,
    labels: int,
    spacing_mm: Sequence[float],
    tolerance_mm: float,
) -> tuple[np.ndarray, np.ndarray]:
    """HD95 and NSD of labels 1..L (ASSD is computed too, and discarded)."""
    results = surface_metrics(
        prediction,
        reference,
        spacing_mm=spacing_mm,
        labels=range(1, labels + 1),
        tolerance_mm=tolerance_mm,
    )
    structures = range(1, labels + 1)
    return (
        np.array([results[label].hd95 for label in structures]),
        np.array([results[label].nsd for label in structures]),
    )


def monai_dice_label_map(
    prediction: torch.Tensor, reference: torch.Tensor, labels: int
) -> np.ndarray:
    """MONAI Dice of labels 1..L straight from B1HWD label maps."""
    metric = DiceMetric(include_background=False, reduction="none", num_classes=labels + 1)
    metric(y_pred=prediction[None, None], y=reference[None, None])
    return metric.aggregate()[0].numpy()


def one_hot_chunk(
    *label_maps: torch.Tensor, first: int, last: int, labels: int
) -> list[torch.Tensor]:
    """MONAI one-hot (B x C x HWD float32) of labels first..last-1, channel 0 = all others."""
    channels = last - first + 1
    tensors = []
    for label_map in label_maps:
        if channels <= labels:  # a chunk: its labels -> 1..n, every other voxel -> 0
            inside = (label_map >= first) & (label_map < last)
            label_map = torch.where(inside, label_map.long() - (first - 1), 0)
        tensors.append(one_hot(label_map[None, None], num_classes=channels, dim=1))
    return tensors


def monai_one_hot_metrics(
    prediction: torch.Tensor,
    reference: torch.Tensor,
    labels: int,
    spacing_mm: Sequence[float],
    chunk: int,
    tolerance_mm: float,
) -> tuple[list[float], np.ndarray, np.ndarray, np.ndarray]:
    """One-hot conversion, DiceMetric, HausdorffDistanceMetric and SurfaceDiceMetric, timed
    separately.

    Returns:
        [one-hot s, Dice s, HD95 s, NSD s], Dice, HD95 and NSD of labels 1..L.
    """
    chunk = chunk or labels
    seconds = [0.0, 0.0, 0.0, 0.0]
    dice, hd95, nsd = [], [], []
    for first in range(1, labels + 1, chunk):
        last = min(first + chunk, labels + 1)
        elapsed, (prediction_one_hot, reference_one_hot) = timed(
            one_hot_chunk, prediction, reference, first=first, last=last, labels=labels
        )
        seconds[0] += elapsed
        dice_metric = DiceMetric(include_background=False, reduction="none")
        elapsed, _ = timed(dice_metric, y_pred=prediction_one_hot, y=reference_one_hot)
        seconds[1] += elapsed
        dice.append(dice_metric.aggregate()[0].numpy())
        hd_metric = HausdorffDistanceMetric(
            include_background=False, percentile=95, reduction="none"
        )
        elapsed, _ = timed(
            hd_metric, y_pred=prediction_one_hot, y=reference_one_hot, spacing=list(spacing_mm)
        )
        seconds[2] += elapsed
        hd95.append(hd_metric.aggregate()[0].numpy())
        nsd_metric = SurfaceDiceMetric(
            class_thresholds=[tolerance_mm] * (last - first),
            include_background=False,
            reduction="none",
        )
        elapsed, _ = timed(
            nsd_metric, y_pred=prediction_one_hot, y=reference_one_hot, spacing=list(spacing_mm)
        )
        seconds[3] += elapsed
        nsd.append(nsd_metric.aggregate()[0].numpy())
        del prediction_one_hot, reference_one_hot
    return seconds, np.concatenate(dice), np.concatenate(hd95), np.concatenate(nsd)


def max_difference(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, bool]:
    """Largest |difference| and whether every value agrees within TOLERANCE (rel. or abs.)."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    equal = bool(np.allclose(ours, theirs, rtol=TOLERANCE, atol=TOLERANCE, equal_nan=True))
    return float(np.nanmax(np.abs(ours - theirs))), equal


def load_average() -> str:
    """The 1-minute load average: other jobs on the machine slow both tools alike."""
    return f"{os.getloadavg()[0]:.2f}"


def parse_numbers(text: str, kind: type) -> tuple:
    """``"256,256,128"`` -> ``(256, 256, 128)``."""
    return tuple(kind(part) for part in text.split(","))


def main() -> int:
    """Build the volume, time both tools, check the values, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=120, help="structures in the volume")
    parser.add_argument("--shape", default="256,256,128", help="volume shape, e.g. 256,256,128")
    parser.add_argument("--spacing", default="0.8,0.8,2.5", help="voxel size in mm per axis")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per tool")
    parser.add_argument(
        "--monai-chunk", type=int, default=30, help="labels per one-hot chunk for MONAI, 0 = all"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the synthetic volume")
    parser.add_argument("--tolerance-mm", type=float, default=1.0, help="NSD tolerance in mm")
    args = parser.parse_args()
    shape = parse_numbers(args.shape, int)
    spacing = parse_numbers(args.spacing, float)
    labels = args.labels
    warnings.filterwarnings("ignore", module="monai")

    prediction, reference = synthesize(shape, labels, spacing, args.seed)
    present = [
        np.bincount(m.ravel(), minlength=labels + 1)[1:] > 0 for m in (prediction, reference)
    ]
    missing = [int(label) + 1 for label in np.flatnonzero(~(present[0] & present[1]))]
    if missing:
        print(f"labels missing from the synthetic maps: {missing}; use another --seed")
        return 2
    print(
        f"volume {'x'.join(map(str, shape))}, {labels} labels, spacing {spacing} mm, "
        f"torch threads {torch.get_num_threads()}, load average {load_average()}"
    )

    timings = Timings()
    for _ in range(args.repeats):
        seconds, dice = timed(medseg_dice, prediction, reference, labels)
        timings.medseg_dice.append(seconds)
        seconds, (hd95, nsd) = timed(
            medseg_surface, prediction, reference, labels, spacing, args.tolerance_mm
        )
        timings.medseg_surface.append(seconds)
        prediction_tensor = torch.from_numpy(prediction)
        reference_tensor = torch.from_numpy(reference)
        seconds, monai_dice = timed(
            monai_dice_label_map, prediction_tensor, reference_tensor, labels
        )
        timings.monai_dice_label_map.append(seconds)
        monai_seconds, monai_dice_one_hot, monai_hd95, monai_nsd = monai_one_hot_metrics(
            prediction_tensor,
            reference_tensor,
            labels,
            spacing,
            args.monai_chunk,
            args.tolerance_mm,
        )
        timings.monai_one_hot.append(monai_seconds[0])
        timings.monai_dice_one_hot.append(monai_seconds[1])
        timings.monai_hd95.append(monai_seconds[2])
        timings.monai_nsd.append(monai_seconds[3])

    median = {name: statistics.median(values) for name, values in vars(timings).items()}
    ours_dice = median["medseg_dice"]
    ours_all = ours_dice + median["medseg_surface"]
    monai_dice_one_hot_s = median["monai_one_hot"] + median["monai_dice_one_hot"]
    monai_dice_s = min(median["monai_dice_label_map"], monai_dice_one_hot_s)
    monai_dice_hd = monai_dice_one_hot_s + median["monai_hd95"]
    monai_all = monai_dice_hd + median["monai_nsd"]

    print(f"median of {args.repeats}, seconds; load average now {load_average()}")
    rows = [
        ("medseg Dice (confusion matrix)", ours_dice),
        ("medseg surface_metrics (HD95+NSD+ASSD)", median["medseg_surface"]),
        ("MONAI DiceMetric on label maps", median["monai_dice_label_map"]),
        (f"MONAI one_hot (chunks of {args.monai_chunk or labels})", median["monai_one_hot"]),
        ("MONAI DiceMetric on one-hot", median["monai_dice_one_hot"]),
        ("MONAI HausdorffDistanceMetric p95", median["monai_hd95"]),
        (f"MONAI SurfaceDiceMetric ({args.tolerance_mm:g} mm)", median["monai_nsd"]),
    ]
    for name, seconds in rows:
        print(f"  {name:<42}{seconds:>10.3f}")
    print(
        f"Dice only:    MONAI {monai_dice_s:.3f} s / medseg {ours_dice:.3f} s = "
        f"{monai_dice_s / ours_dice:.1f}x"
    )
    monai_hd_s = median["monai_one_hot"] + median["monai_hd95"]
    print(
        f"HD95 only:    MONAI {monai_hd_s:.3f} s (one_hot + HD) / medseg "
        f"{median['medseg_surface']:.3f} s (surface_metrics) = "
        f"{monai_hd_s / median['medseg_surface']:.1f}x"
    )
    print(
        f"Dice + HD95:  MONAI {monai_dice_hd:.3f} s / medseg {ours_all:.3f} s = "
        f"{monai_dice_hd / ours_all:.1f}x"
    )
    print(
        f"Dice + HD95 + NSD:  MONAI {monai_all:.3f} s / medseg {ours_all:.3f} s = "
        f"{monai_all / ours_all:.1f}x (goal >= {SPEED_GOAL:.0f}x)"
    )

    checks = {
        "Dice vs MONAI label-map Dice": max_difference(dice, monai_dice),
        "Dice vs MONAI one-hot Dice": max_difference(dice, monai_dice_one_hot),
        "HD95 vs MONAI HD95 (mm)": max_difference(hd95, monai_hd95),
        "NSD vs MONAI NSD": max_difference(nsd, monai_nsd),
    }
    for name, (difference, equal) in checks.items():
        print(f"  {name:<32} max |diff| {difference:.3g}  {'equal' if equal else 'DIFFERENT'}")
    print(
        f"  HD95 range {np.min(hd95):.3f} .. {np.max(hd95):.3f} mm, "
        f"Dice range {np.min(dice):.4f} .. {np.max(dice):.4f}"
    )
    return 0 if all(equal for _, equal in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
