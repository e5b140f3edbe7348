"""The plan: how every case is preprocessed, and what the networks are built from.

Chosen automatically from the dataset fingerprint as nnU-Net does, every choice overridable
through ``PlanOptions`` (``configs/plan/*.yaml``). The plan travels with the trained model so
inference never guesses spacing or normalization.

Rules:

* target spacing: the median spacing per axis. When the coarsest median axis is more than
  ``anisotropy_threshold`` times the finest, that axis gets the 10th percentile of its
  spacings instead (but stays coarser than the other axes), so thick-slice cases are not
  upsampled into blur.
* one cache serves both configurations: 2D networks train on slices perpendicular to
  ``slice_axis`` (the coarsest axis; the last axis when isotropic) of the same resampled
  volumes. (nnU-Net leaves the through-plane axis unresampled for 2D; one cache is simpler
  and the difference only matters for strongly anisotropic data.)
* 3D patch: the median cropped shape at target spacing, shrunk (largest extent in mm first)
  until it fits the memory budget (128^3 voxels per sample at 8 GB, scaling linearly), then
  rounded up to a multiple of the network's total stride per axis. Batch: as many samples as
  the budget allows for two 128^3 samples, at least 2, at most 5% of the dataset's voxels.
* low resolution (``3d_lowres``, docs/preprocessing.md): per axis ``max(spacing, L)`` with
  ``L = max(3 mm, 2 x the finest spacing)``, proposed when the median image is more than
  ``LOWRES_CREATION_THRESHOLD`` times the 3D patch (nnU-Net's rule) and at most half as many
  voxels at that spacing; ``PlanOptions.low_resolution`` forces it on or off.
* pooling: an axis is downsampled (stride 2) at a level while its feature map stays >= 4
  voxels and its spacing is at most twice the finest current spacing; at most 5 levels.
* normalization, per input channel (``channel_names``: the manifest's, as dataset.json's
  ``channel_names`` or ``modality`` named them; one channel named after the modality for a
  single-channel dataset): a channel named CT clips to its foreground 0.5-99.5 percentiles and
  z-scores with its foreground mean/std; a channel named ``noNorm`` (nnU-Net's name) is left
  as is; every other channel is z-scored per case. ``PlanOptions.normalization`` overrides
  the scheme of every channel. ``normalization`` is the first channel's (plans from before
  multi-channel cases hold only it, and load as one channel named after ``modality``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from medseg import __version__
from medseg.config_io import load_json_model
from medseg.errors import ManifestError
from medseg.io.atomic import write_text_atomic
from medseg.manifest import (
    ignore_label_value,
    label_names_path,
    read_label_names,
    read_manifest,
    read_regions,
    sha256_file,
    without_ignore_label,
)
from medseg.preprocess.config import (
    BorderWeightOptions,
    LabelResampling,
    NormalizationScheme,
    PlanOptions,
)
from medseg.preprocess.fingerprint import (
    ChannelFingerprint,
    DatasetFingerprint,
    fingerprint_dataset,
)
from medseg.regions import Region, RegionSet

REFERENCE_PATCH_VOXELS_3D = 128**3
REFERENCE_PATCH_VOXELS_2D = 512**2
REFERENCE_BATCH_2D = 12
REFERENCE_MEMORY_GB = 8.0
MIN_FEATURE_MAP = 4  # smallest feature map edge at the bottom of the network
MIN_PATCH_EDGE = 8
MAX_POOLING_LEVELS = 5
MAX_DATASET_FRACTION_PER_BATCH = 0.05
LOWRES_MIN_SPACING_MM = 3.0  # TotalSegmentator's --fast resolution
LOWRES_CREATION_THRESHOLD = 4.0  # nnU-Net's: median image / full-resolution 3D patch voxels
LOW_RESOLUTION = "3d_lowres"


class NormalizationPlan(BaseModel):
    """Intensity normalization resolved for the dataset."""

    model_config = ConfigDict(extra="forbid")

    scheme: NormalizationScheme
    clip_low: float | None = None
    clip_high: float | None = None
    mean: float | None = None
    std: float | None = None


class Configuration(BaseModel):
    """A network configuration (3D patches or 2D slices) on the plan's voxel grid."""

    model_config = ConfigDict(extra="forbid")

    name: str
    patch_size: list[int]
    batch_size: int
    pool_strides: list[list[int]]
    slice_axis: int | None = None  # for 2D: slices are perpendicular to this axis
    target_spacing: list[float] | None = None  # its own spacing (3d_lowres); None: the plan's


class Plan(BaseModel):
    """Everything preprocessing, training and inference need to agree on."""

    model_config = ConfigDict(extra="forbid")

    medseg_version: str
    manifest_sha256: str
    modality: str
    label_names: dict[int, str]
    ignore_label: int | None = None  # unannotated voxels: in no loss or metric, never predicted
    regions: list[Region] | None = None  # region-based training (medseg.regions); None: labels
    regions_class_order: list[int] | None = None  # the label value each region paints
    target_spacing: list[float]
    median_shape: list[int]
    normalization: NormalizationPlan
    channel_names: list[str]
    channel_normalization: list[NormalizationPlan]
    image_resample_order: int
    label_resampling: LabelResampling
    crop_to_nonzero: bool
    foreground_fraction: float
    border_weights: BorderWeightOptions
    configurations: dict[str, Configuration]
    fingerprint: dict
    seed: int

    @model_validator(mode="before")
    @classmethod
    def _single_channel_default(cls, data: Any) -> Any:
        """A plan from before multi-channel cases: one channel named after the modality."""
        if isinstance(data, dict) and "channel_names" not in data and "modality" in data:
            data = {**data, "channel_names": [data["modality"]]}
        if isinstance(data, dict) and "channel_normalization" not in data:
            data = {**data, "channel_normalization": [data.get("normalization")]}
        return data

    @model_validator(mode="after")
    def _one_normalization_per_channel(self) -> Plan:
        if not self.channel_names or len(self.channel_normalization) != len(self.channel_names):
            raise ValueError(
                f"channel_normalization has {len(self.channel_normalization)} entries for "
                f"{len(self.channel_names)} channel_names (one per channel, at least one)"
            )
        if self.channel_normalization[0] != self.normalization:
            raise ValueError("normalization must equal channel_normalization[0]")
        if (self.regions is None) != (self.regions_class_order is None):
            raise ValueError("regions and regions_class_order go together (both or neither)")
        if self.regions is not None and len(self.regions) != len(self.regions_class_order or []):
            raise ValueError("regions_class_order needs one label value per region")
        return self

    @property
    def region_set(self) -> RegionSet | None:
        """The regions with their painting order, or None for a label-based plan."""
        if self.regions is None or self.regions_class_order is None:
            return None
        return RegionSet(regions=self.regions, regions_class_order=self.regions_class_order)

    @property
    def activation(self) -> str:
        """How network logits become probabilities: ``"sigmoid"`` per region, else
        ``"softmax"`` (a key of :data:`medseg.infer.sliding_window.ACTIVATIONS`)."""
        return "sigmoid" if self.regions is not None else "softmax"

    @property
    def num_outputs(self) -> int:
        """Output channels of the networks: one per region, else one per label value."""
        return len(self.regions) if self.regions is not None else max(self.label_names) + 1

    def digest(self) -> str:
        """SHA-256 of the plan's canonical JSON: a cache built with another plan is stale."""
        # fields a plan does not use digest as before they existed: its caches stay valid
        unset: dict[str, Any] = (
            {"regions": True, "regions_class_order": True} if self.regions is None else {}
        )
        own = {name for name, c in self.configurations.items() if c.target_spacing is None}
        if own:
            unset["configurations"] = {name: {"target_spacing"} for name in own}
        return hashlib.sha256(
            self.model_dump_json(exclude=unset or None).encode("utf-8")
        ).hexdigest()

    def for_configuration(self, name: str) -> Plan:
        """The plan with configuration ``name``'s own spacing as ``target_spacing`` (itself
        when the configuration has none): what its cases are preprocessed with."""
        spacing = self.configurations[name].target_spacing
        return self if spacing is None else self.model_copy(update={"target_spacing": spacing})

    @property
    def low_resolution(self) -> list[str]:
        """The configurations with a spacing of their own (``3d_lowres``)."""
        return [n for n, c in self.configurations.items() if c.target_spacing is not None]

    def save(self, path: Path) -> Path:
        """Write the plan as indented JSON, atomically."""
        write_text_atomic(path, json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> Plan:
        """Read a plan written by ``save``.

        Raises:
            ConfigError: the file is unreadable, not JSON, or not a valid plan (names the key).
        """
        return load_json_model(path, cls)


def target_spacing(fingerprint: DatasetFingerprint, *, anisotropy_threshold: float) -> list[float]:
    """Median spacing per axis, with nnU-Net's rule for a strongly anisotropic axis."""
    spacings = np.array(fingerprint.spacings, float)
    target = np.median(spacings, axis=0)
    coarse = int(np.argmax(target))
    others = [a for a in range(3) if a != coarse]
    if target[coarse] > anisotropy_threshold * target.min():
        low = np.percentile(spacings[:, coarse], 10)
        target[coarse] = max(low, target[others].max() + 1e-5)
    return [float(v) for v in target]


def low_resolution_spacing(spacing: list[float]) -> list[float]:
    """The ``3d_lowres`` spacing: per axis ``max(spacing, L)``, ``L = max(3 mm, 2 x the
    finest spacing)`` (module rules)."""
    coarse = max(LOWRES_MIN_SPACING_MM, 2 * min(spacing))
    return [max(float(s), coarse) for s in spacing]


def median_shape(fingerprint: DatasetFingerprint, spacing: list[float]) -> list[int]:
    """Median cropped shape after resampling to ``spacing``."""
    shapes = np.array(fingerprint.cropped_shapes, float) * np.array(fingerprint.spacings) / spacing
    return [round(float(v)) for v in np.median(shapes, axis=0)]


def pool_strides(patch_size: list[int], spacing: list[float]) -> list[list[int]]:
    """Stride-2 downsampling per level and axis (see the module rules)."""
    size, current = np.array(patch_size, float), np.array(spacing, float)
    strides: list[list[int]] = []
    for _ in range(MAX_POOLING_LEVELS):
        finest = current.min()
        level = [
            2 if s / 2 >= MIN_FEATURE_MAP and c <= 2 * finest else 1
            for s, c in zip(size, current, strict=True)
        ]
        if all(v == 1 for v in level):
            break
        strides.append(level)
        size, current = size / np.array(level), current * np.array(level)
    return strides


def _divisible(patch: list[int], strides: list[list[int]]) -> list[int]:
    total = np.prod(np.array(strides), axis=0) if strides else np.ones(len(patch), int)
    return [int(np.ceil(p / t) * t) for p, t in zip(patch, total, strict=True)]


def _fit_patch(shape: list[int], spacing: list[float], budget: float) -> list[int]:
    """Shrink (largest extent in mm first) until the stride-rounded patch fits ``budget``."""
    patch = [max(MIN_PATCH_EDGE, s) for s in shape]
    while True:
        rounded = _divisible(patch, pool_strides(patch, spacing))
        if np.prod(rounded) <= budget or all(p <= MIN_PATCH_EDGE for p in patch):
            return rounded
        extents = [p * s for p, s in zip(patch, spacing, strict=True)]
        axis = int(np.argmax(extents))
        patch[axis] = max(MIN_PATCH_EDGE, int(patch[axis] * 0.9))


def _batch_size(patch: list[int], *, budget_samples: float, dataset_voxels: float) -> int:
    by_memory = int(budget_samples // np.prod(patch))
    by_dataset = int(MAX_DATASET_FRACTION_PER_BATCH * dataset_voxels // np.prod(patch))
    return max(2, min(by_memory, max(by_dataset, 2)))


def make_plan(
    fingerprint: DatasetFingerprint,
    *,
    options: PlanOptions,
    label_names: dict[int, str],
    manifest_sha256: str,
    ignore_label: int | None = None,
    regions: RegionSet | None = None,
) -> Plan:
    """Derive the plan from the fingerprint, applying ``options``' overrides.

    ``label_names`` are the labels the networks predict; ``ignore_label`` is the value of
    unannotated voxels (see :func:`medseg.manifest.ignore_label_value`), not among them;
    ``regions`` makes the networks region-based (one sigmoid output per region).
    """
    spacing = list(
        options.target_spacing
        or target_spacing(fingerprint, anisotropy_threshold=options.anisotropy_threshold)
    )
    median = median_shape(fingerprint, spacing)
    scale = options.memory_budget_gb / REFERENCE_MEMORY_GB
    dataset_voxels = float(np.sum(np.prod(fingerprint.cropped_shapes, axis=1)))
    patch_3d = list(
        options.patch_size_3d or _fit_patch(median, spacing, REFERENCE_PATCH_VOXELS_3D * scale)
    )
    slice_axis = int(np.argmax(spacing)) if max(spacing) > min(spacing) * 1.01 else 2
    in_plane = [a for a in range(3) if a != slice_axis]
    patch_2d = list(
        options.patch_size_2d
        or _fit_patch(
            [median[a] for a in in_plane],
            [spacing[a] for a in in_plane],
            REFERENCE_PATCH_VOXELS_2D * scale,
        )
    )
    normalizations = [_normalization(channel, options) for channel in fingerprint.channel_list()]
    configurations = {
        "3d": Configuration(
            name="3d",
            patch_size=patch_3d,
            batch_size=options.batch_size_3d
            or _batch_size(
                patch_3d,
                budget_samples=2 * REFERENCE_PATCH_VOXELS_3D * scale,
                dataset_voxels=dataset_voxels,
            ),
            pool_strides=pool_strides(patch_3d, spacing),
        ),
        "2d": Configuration(
            name="2d",
            patch_size=patch_2d,
            batch_size=options.batch_size_2d
            or _batch_size(
                patch_2d,
                budget_samples=REFERENCE_BATCH_2D * REFERENCE_PATCH_VOXELS_2D * scale,
                dataset_voxels=dataset_voxels / max(median[slice_axis], 1),
            ),
            pool_strides=pool_strides(patch_2d, [spacing[a] for a in in_plane]),
            slice_axis=slice_axis,
        ),
    }
    lowres = low_resolution_spacing(spacing)
    lowres_median = median_shape(fingerprint, lowres)
    wanted = (
        np.prod(median) > LOWRES_CREATION_THRESHOLD * np.prod(patch_3d)
        and np.prod(lowres_median) <= np.prod(median) / 2
    )
    if options.low_resolution if options.low_resolution is not None else wanted:
        patch = _fit_patch(lowres_median, lowres, REFERENCE_PATCH_VOXELS_3D * scale)
        configurations[LOW_RESOLUTION] = Configuration(
            name=LOW_RESOLUTION,
            patch_size=patch,
            batch_size=configurations["3d"].batch_size,
            pool_strides=pool_strides(patch, lowres),
            target_spacing=lowres,
        )
    return Plan(
        medseg_version=__version__,
        manifest_sha256=manifest_sha256,
        modality=fingerprint.modality,
        label_names={int(k): v for k, v in label_names.items()},
        ignore_label=ignore_label,
        regions=regions.regions if regions else None,
        regions_class_order=regions.regions_class_order if regions else None,
        target_spacing=spacing,
        median_shape=median,
        normalization=normalizations[0],
        channel_names=[channel.name for channel in fingerprint.channel_list()],
        channel_normalization=normalizations,
        image_resample_order=options.image_resample_order,
        label_resampling=options.label_resampling,
        crop_to_nonzero=options.crop_to_nonzero,
        foreground_fraction=options.foreground_fraction,
        border_weights=options.border_weights,
        configurations=configurations,
        fingerprint=fingerprint.to_dict(),
        seed=options.seed,
    )


# Channel names (upper case, no separators) that choose a scheme; any other name: z-score.
_CHANNEL_SCHEMES = {"CT": NormalizationScheme.CT, "NONORM": NormalizationScheme.NONE}


def channel_scheme(name: str) -> NormalizationScheme:
    """The normalization a channel's name calls for, as nnU-Net's ``channel_names`` choose:
    ``"CT"`` -> CT, ``"noNorm"`` -> none, anything else (``"T1"``, ``"MR"``...) -> z-score."""
    key = re.sub(r"[\s_\-.]", "", name).upper()
    return _CHANNEL_SCHEMES.get(key, NormalizationScheme.ZSCORE)


def _normalization(channel: ChannelFingerprint, options: PlanOptions) -> NormalizationPlan:
    scheme = options.normalization or channel_scheme(channel.name)
    if scheme is not NormalizationScheme.CT:
        return NormalizationPlan(scheme=scheme)
    stats = channel.intensity
    return NormalizationPlan(
        scheme=scheme,
        clip_low=stats.percentile_00_5,
        clip_high=stats.percentile_99_5,
        mean=stats.mean,
        std=stats.std,
    )


def plan_manifest(
    manifest_path: Path,
    *,
    options: PlanOptions,
    data_root: Path | None = None,
    workers: int = 1,
) -> Plan:
    """Fingerprint a manifest's training cases and derive its plan.

    Raises:
        IgnoreLabelError: the label names' ignore label is not the highest value.
        RegionsError: the sidecar's regions are inconsistent.
    """
    records = read_manifest(manifest_path)
    try:
        label_names: dict[int, str] | None = read_label_names(manifest_path)
    except ManifestError:
        label_names = None
    ignore_label = (
        ignore_label_value(label_names, where=label_names_path(manifest_path))
        if label_names is not None
        else None
    )
    fingerprint = fingerprint_dataset(
        records,
        manifest_path=manifest_path,
        data_root=data_root,
        samples=options.intensity_samples_per_case,
        seed=options.seed,
        workers=workers,
        ignore_label=ignore_label,
    )
    if label_names is None:
        label_names = {
            v: ("background" if v == 0 else f"label_{v}") for v in fingerprint.label_values
        }
    return make_plan(
        fingerprint,
        options=options,
        label_names=without_ignore_label(label_names),
        manifest_sha256=sha256_file(manifest_path),
        ignore_label=ignore_label,
        regions=read_regions(manifest_path),
    )
