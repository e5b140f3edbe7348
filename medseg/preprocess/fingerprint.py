"""Dataset fingerprint: what the training cases look like, for choosing a plan.

Per case (after reorientation to RAS): voxel spacing, shape, shape after cropping to the
non-zero region, and up to ``samples`` intensities per channel drawn (seeded, the same voxels
in every channel) from labelled voxels. For the dataset: the spacings and cropped shapes of
all cases and, per channel, the foreground intensity statistics (mean, std, 0.5/50/99.5
percentiles, min, max) of the pooled samples. Channel names come from the manifest
(``extra["channel_names"]``, written by ``medseg.datasets`` for multi-channel cases); a
single-channel dataset has one channel named after its modality.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypedDict

import numpy as np

from medseg.errors import ChannelsError, MissingLabelsError
from medseg.io.formats import read_volume
from medseg.manifest import ManifestRecord, resolve
from medseg.parallel import process_pool
from medseg.phi import hash_identifier
from medseg.preprocess.crop_normalize import channels_first, crop, nonzero_box
from medseg.progress import ProgressCallback

logger = logging.getLogger(__name__)


@dataclass
class CaseFingerprint:
    """What one training case contributes to the dataset fingerprint."""

    case_id: str
    spacing: list[float]
    shape: list[int]
    cropped_shape: list[int]
    foreground_samples: np.ndarray  # (C, N): the same N labelled voxels in every channel
    label_values: list[int]


@dataclass
class IntensityStatistics:
    """Statistics of foreground (labelled) intensities over the dataset."""

    mean: float
    std: float
    percentile_00_5: float
    percentile_50_0: float
    percentile_99_5: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, samples: np.ndarray) -> IntensityStatistics:
        """Statistics of pooled foreground ``samples`` (at least one)."""
        samples = samples.astype(np.float64)
        p00_5, p50, p99_5 = np.percentile(samples, [0.5, 50.0, 99.5])
        return cls(
            mean=float(samples.mean()),
            std=float(samples.std()),
            percentile_00_5=float(p00_5),
            percentile_50_0=float(p50),
            percentile_99_5=float(p99_5),
            minimum=float(samples.min()),
            maximum=float(samples.max()),
        )


@dataclass
class ChannelFingerprint:
    """One input channel: its name (``"CT"``, ``"T2"``...) and foreground statistics."""

    name: str
    intensity: IntensityStatistics


@dataclass
class DatasetFingerprint:
    """The facts ``make_plan`` decides from.

    ``intensity`` is the first channel's statistics; ``channels`` lists every channel (empty
    means one channel named ``modality``, as fingerprints from before multi-channel cases).
    """

    n_cases: int
    modality: str
    spacings: list[list[float]]
    cropped_shapes: list[list[int]]
    intensity: IntensityStatistics
    label_values: list[int]
    channels: list[ChannelFingerprint] = field(default_factory=list)

    def channel_list(self) -> list[ChannelFingerprint]:
        """Every input channel, in order (at least one)."""
        return self.channels or [ChannelFingerprint(self.modality, self.intensity)]

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


class _CaseArguments(TypedDict):
    """``fingerprint_case``'s keyword arguments, the same for every case."""

    manifest_path: Path
    data_root: Path | None
    samples: int
    seed: int
    ignore_label: int | None


def fingerprint_case(
    record: ManifestRecord,
    *,
    manifest_path: Path,
    data_root: Path | None,
    samples: int,
    seed: int,
    ignore_label: int | None = None,
) -> CaseFingerprint:
    """Fingerprint one labelled case (voxels of ``ignore_label`` are not foreground).

    Raises:
        MissingLabelsError: the case has no label.
        InputError: a file cannot be read.
    """
    image_path, label_path = resolve(record, manifest_path, data_root)
    if label_path is None:
        raise MissingLabelsError(f"{record.case_id}: a fingerprint needs labelled cases")
    image = read_volume(image_path).to_closest_ras()
    label = read_volume(label_path).to_closest_ras()
    voxels = channels_first(image.array)
    box = nonzero_box(voxels)
    cropped_image = crop(voxels, box)
    cropped_label = crop(label.array, box)
    annotated = cropped_label > 0
    if ignore_label is not None:
        annotated &= cropped_label != ignore_label
    foreground = cropped_image[:, annotated]
    rng = np.random.default_rng([seed, int(hash_identifier(record.case_id), 16) % (2**32)])
    if foreground.shape[1] > samples:
        foreground = foreground[:, rng.choice(foreground.shape[1], size=samples, replace=False)]
    return CaseFingerprint(
        case_id=record.case_id,
        spacing=[float(s) for s in image.spacing_mm],
        shape=list(image.shape[:3]),
        cropped_shape=[hi - lo for lo, hi in box],
        foreground_samples=foreground.astype(np.float32),
        label_values=[int(v) for v in np.unique(cropped_label)],
    )


def fingerprint_dataset(
    records: list[ManifestRecord],
    *,
    manifest_path: Path,
    data_root: Path | None,
    samples: int = 10_000,
    seed: int = 0,
    workers: int = 1,
    on_progress: ProgressCallback | None = None,
    ignore_label: int | None = None,
) -> DatasetFingerprint:
    """Fingerprint the labelled training cases of a manifest (train split if any, else all);
    voxels of ``ignore_label`` (unannotated) are not foreground.

    Raises:
        MissingLabelsError: no labelled case, or no labelled voxel in any training case.
        InputError: a case's image or label cannot be read.
    """
    labelled = [r for r in records if r.label is not None]
    training = [r for r in labelled if r.split == "train"] or labelled
    if not training:
        raise MissingLabelsError(f"{manifest_path}: no labelled cases to fingerprint")
    args: _CaseArguments = {
        "manifest_path": manifest_path,
        "data_root": data_root,
        "samples": samples,
        "seed": seed,
        "ignore_label": ignore_label,
    }
    cases: list[CaseFingerprint] = []
    with process_pool(workers, preload=[__name__]) as pool:
        futures = [pool.submit(fingerprint_case, record, **args) for record in training]
        for done, future in enumerate(futures, start=1):
            cases.append(future.result())
            if on_progress:
                on_progress("Fingerprinting", done, len(futures))
    modalities = {r.modality for r in training}
    modality = modalities.pop() if len(modalities) == 1 else "mixed"
    names = _channel_names(training, modality=modality, manifest_path=manifest_path)
    pooled = np.concatenate([c.foreground_samples for c in cases], axis=1)
    if pooled.shape[1] == 0:
        raise MissingLabelsError(f"{manifest_path}: no labelled voxels in any training case")
    if pooled.shape[0] != len(names):
        raise ChannelsError(
            str(manifest_path),
            f"the images have {pooled.shape[0]} channel(s), the manifest names {len(names)}",
        )
    channels = [
        ChannelFingerprint(name, IntensityStatistics.of(samples))
        for name, samples in zip(names, pooled, strict=True)
    ]
    return DatasetFingerprint(
        n_cases=len(cases),
        modality=modality,
        spacings=[c.spacing for c in cases],
        cropped_shapes=[c.cropped_shape for c in cases],
        intensity=channels[0].intensity,
        label_values=sorted({v for c in cases for v in c.label_values}),
        channels=channels,
    )


def _channel_names(
    records: list[ManifestRecord], *, modality: str, manifest_path: Path
) -> list[str]:
    """The channel names every record agrees on (``extra["channel_names"]``, else the
    modality as the one channel's name).

    Raises:
        ChannelsError: two records name their channels differently.
    """
    named = {tuple(r.extra.get("channel_names", [modality])): r.case_id for r in records}
    if len(named) > 1:
        cases = ", ".join(f"{case_id}: {list(names)}" for names, case_id in named.items())
        raise ChannelsError(str(manifest_path), f"cases name their channels differently ({cases})")
    return list(next(iter(named)))
