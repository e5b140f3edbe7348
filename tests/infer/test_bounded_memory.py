"""Prediction memory grows with neither the number of classes nor the length of the scan
beyond the network's own outputs: the reduced-size version of the large-volume path (a
randomly initialised 3D U-Net on a long phantom CT, ``tests.infer.memory_probe``), measured in
fresh processes by their peak resident set."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.infer.memory_probe import PATCH


def _growth_mb(classes: int, slices: int, *extra: str, runs: int = 1) -> dict:
    """The probe's result in a fresh process; with ``runs`` > 1, the run that grew least.

    The peak resident set carries allocator noise (about +-25 MB between identical runs here,
    once +100 MB with the machine loaded), never less than what the path needs, so the least
    of two runs is the measure where a bound is tight.
    """
    probe = [sys.executable, "-m", "tests.infer.memory_probe"]
    results = []
    for _ in range(runs):
        done = subprocess.run(
            [*probe, "--classes", str(classes), "--slices", str(slices), *extra],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        results.append(json.loads(done.stdout.splitlines()[-1]))
    return min(results, key=lambda result: result["growth_mb"])


def _full_copy_mb(classes: int, grid: list[int]) -> float:
    """One float32 map per class over the whole network grid: what the old path held ~3 of."""
    voxels = grid[0] * grid[1] * grid[2]
    return classes * voxels * 4 / 2**20


@pytest.mark.slow  # minutes of commands: the serial slow suite, so make test stays < 15 min
def test_peak_memory_does_not_grow_with_the_classes_or_the_scan_length() -> None:
    few, many = _growth_mb(8, 600), _growth_mb(64, 600, runs=2)
    shorter = _growth_mb(64, 300, runs=2)  # both sides of a tight bound: the least of two
    held = _growth_mb(64, 600, "--in-memory")  # every class's probabilities held at once
    grid = many["grid"]
    assert grid[2] > 10 * PATCH[2]  # a long scan: many rows of windows
    # the probe sees what holding every class costs ...
    assert held["growth_mb"] - many["growth_mb"] > 0.5 * _full_copy_mb(64, grid)
    # ... and 56 more classes cost far less than one map per class over the grid (measured
    # 67 MB, against 166 MB for one such copy: the network's outputs and one row of sums)
    assert many["growth_mb"] - few["growth_mb"] < 0.6 * _full_copy_mb(56, grid)
    # twice the slices: the same (measured -27 to +35 MB; one copy of the added slices: 90 MB)
    added = _full_copy_mb(64, [grid[0], grid[1], grid[2] - shorter["grid"][2]])
    # (half a copy: identical runs differ by up to 35 MB here; the old path held about three)
    assert many["growth_mb"] - shorter["growth_mb"] < 0.5 * added
    assert many["labels"] > 1 and few["labels"] > 1
