"""Dataset fingerprint: what the training cases look like, for choosing a plan.

Per case (after reorientation to RAS): voxel spacing, shape, shape after cropping to the
non-zero region, and up to ``samples`` intensities drawn (seeded) from labelled voxels. For
the dataset: the spacings and cropped shapes of all cases and the foreground intensity
statistics (mean, std, 0.5/50/99.5 percentiles, min, max) of the pooled samples.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np

from medseg.errors import MissingLabelsError
from medseg.io.formats import read_volume
from medseg.manifest import ManifestRecord, resolve
from medseg.parallel import process_pool
from medseg.phi import hash_identifier
from medseg.preprocess.crop_normalize import crop, nonzero_box
from medseg.progress import ProgressCallback

logger = logging.getLogger(__name__)


@dataclass
class CaseFingerprint:
    """What one training case contributes to the dataset fingerprint."""

    case_id: str
    spacing: list[float]
    shape: list[int]
    cropped_shape: list[int]
    foreground_samples: np.ndarray
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


@dataclass
class DatasetFingerprint:
    """The facts ``make_plan`` decides from."""

    n_cases: int
    modality: str
    spacings: list[list[float]]
    cropped_shapes: list[list[int]]
    intensity: IntensityStatistics
    label_values: list[int]

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


class _CaseArguments(TypedDict):
    """``fingerprint_case``'s keyword arguments, the same for every case."""

    manifest_path: Path
    data_root: Path | None
    samples: int
    seed: int


def fingerprint_case(
    record: ManifestRecord, *, manifest_path: Path, data_root: Path | None, samples: int, seed: int
) -> CaseFingerprint:
    """Fingerprint one labelled case.

    Raises:
        MissingLabelsError: the case has no label.
        InputError: a file cannot be read.
    """
    image_path, label_path = resolve(record, manifest_path, data_root)
    if label_path is None:
        raise MissingLabelsError(f"{record.case_id}: a fingerprint needs labelled cases")
    image = read_volume(image_path).to_closest_ras()
    label = read_volume(label_path).to_closest_ras()
    box = nonzero_box(image.array)
    cropped_image = crop(image.array, box)
    cropped_label = crop(label.array, box)
    foreground = (
        cropped_image[cropped_label > 0]
        if cropped_image.ndim == 3
        else cropped_image[0][cropped_label > 0]
    )
    rng = np.random.default_rng([seed, int(hash_identifier(record.case_id), 16) % (2**32)])
    if foreground.size > samples:
        foreground = rng.choice(foreground, size=samples, replace=False)
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
) -> DatasetFingerprint:
    """Fingerprint the labelled training cases of a manifest (train split if any, else all).

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
    }
    cases: list[CaseFingerprint] = []
    with process_pool(workers, preload=[__name__]) as pool:
        futures = [pool.submit(fingerprint_case, record, **args) for record in training]
        for done, future in enumerate(futures, start=1):
            cases.append(future.result())
            if on_progress:
                on_progress("Fingerprinting", done, len(futures))
    pooled = np.concatenate([c.foreground_samples for c in cases]).astype(np.float64)
    if pooled.size == 0:
        raise MissingLabelsError(f"{manifest_path}: no labelled voxels in any training case")
    p00_5, p50, p99_5 = np.percentile(pooled, [0.5, 50.0, 99.5])
    modalities = {r.modality for r in training}
    return DatasetFingerprint(
        n_cases=len(cases),
        modality=modalities.pop() if len(modalities) == 1 else "mixed",
        spacings=[c.spacing for c in cases],
        cropped_shapes=[c.cropped_shape for c in cases],
        intensity=IntensityStatistics(
            mean=float(pooled.mean()),
            std=float(pooled.std()),
            percentile_00_5=float(p00_5),
            percentile_50_0=float(p50),
            percentile_99_5=float(p99_5),
            minimum=float(pooled.min()),
            maximum=float(pooled.max()),
        ),
        label_values=sorted({v for c in cases for v in c.label_values}),
    )
