"""Overlay pictures: label maps drawn over a scan slice (validation, reports)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from medseg.io.atomic import atomic_path


def busiest_slice(labels: np.ndarray, axis: int) -> int:
    """Index along ``axis`` of the slice with the most foreground (the middle if none)."""
    other = tuple(a for a in range(labels.ndim) if a != axis)
    counts = (labels > 0).sum(axis=other)
    return int(np.argmax(counts)) if counts.any() else labels.shape[axis] // 2


def save_overlay(
    path: Path,
    *,
    image: np.ndarray,
    panels: dict[str, np.ndarray],
    axis: int = 2,
    slice_index: int | None = None,
    title: str = "",
) -> Path:
    """Write a PNG with one panel per label map (e.g. reference, prediction) over ``image``.

    Arrays are 3D ``[i, j, k]`` in RAS order; the slice is shown with anterior/superior up.
    """
    reference = next(iter(panels.values()))
    index = busiest_slice(reference, axis) if slice_index is None else slice_index
    take = lambda volume: np.take(volume, index, axis=axis).T  # noqa: E731  (rows = 2nd axis)
    background = take(image)
    low, high = np.percentile(background, [1, 99])
    figure = Figure(figsize=(4 * len(panels), 4))  # no pyplot: no global state, no display
    axes = figure.subplots(1, len(panels), squeeze=False)
    for ax, (name, labels) in zip(axes[0], panels.items(), strict=True):
        ax.imshow(background, cmap="gray", vmin=low, vmax=high, origin="lower")
        shown = np.ma.masked_equal(take(labels), 0)
        ax.imshow(
            shown,
            cmap="tab20",
            alpha=0.45,
            origin="lower",
            vmin=0,
            vmax=20,
            interpolation="nearest",
        )
        ax.set_title(name)
        ax.axis("off")
    figure.suptitle(f"{title} (slice {index} along axis {axis})")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=80, bbox_inches="tight")
    return Path(path)
