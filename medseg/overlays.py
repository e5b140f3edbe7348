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


def save_structure_views(
    path: Path,
    *,
    reference: np.ndarray,
    prediction: np.ndarray,
    value: int,
    image: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """Axial, coronal and sagittal slices through one structure: reference (top), prediction.

    Slices pass through the centre of the structure's reference voxels (or predicted ones when
    the reference lacks it). Without ``image`` the label maps are drawn on a blank background.
    """
    mask = reference == value
    if not mask.any():
        mask = prediction == value
    centre = (
        [round(float(c)) for c in np.argwhere(mask).mean(axis=0)]
        if mask.any()
        else [s // 2 for s in reference.shape]
    )
    background = image if image is not None else np.zeros(reference.shape, np.float32)
    low, high = np.percentile(background, [1, 99]) if image is not None else (0.0, 1.0)
    figure = Figure(figsize=(9, 6))
    axes = figure.subplots(2, 3, squeeze=False)
    views = (("axial", 2), ("coronal", 1), ("sagittal", 0))
    for row, (name, labels) in enumerate((("reference", reference), ("prediction", prediction))):
        for column, (view, axis) in enumerate(views):
            take = lambda volume, a=axis: np.take(volume, centre[a], axis=a).T  # noqa: E731
            ax = axes[row][column]
            ax.imshow(take(background), cmap="gray", vmin=low, vmax=high, origin="lower")
            ax.imshow(
                np.ma.masked_equal(take((labels == value).astype(np.uint8)), 0),
                cmap="autumn",
                alpha=0.5,
                origin="lower",
                vmin=0,
                vmax=1,
                interpolation="nearest",
            )
            ax.set_title(f"{name} {view}", fontsize=8)
            ax.axis("off")
    figure.suptitle(title)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=70, bbox_inches="tight")
    return Path(path)
