"""Planning options: every automatic choice of the plan can be overridden from YAML.

A file in ``configs/plan/`` holds any subset of these keys; unknown keys are errors, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from medseg.config_io import load_yaml_model


class NormalizationScheme(StrEnum):
    """How image intensities are normalized."""

    CT = "ct"  # clip to foreground 0.5-99.5 percentiles, z-score with foreground mean/std
    ZSCORE = "zscore"  # per-case z-score (MR and other modalities)
    NONE = "none"


class LabelResampling(StrEnum):
    """How label maps are resampled."""

    NEAREST = "nearest"
    ONEHOT_LINEAR = "onehot_linear"  # interpolate each label's mask linearly, then argmax


class BorderWeightOptions(BaseModel):
    """U-Net border-weight maps precomputed into the cache (for the ``border_ce`` loss).

    Off by default: one distance transform per structure costs seconds per case on
    many-structure CT, and only the border-weighted loss reads the maps.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    w0: float = Field(10.0, ge=0)
    sigma_voxels: float = Field(5.0, gt=0)
    class_balance: bool = True


class PlanOptions(BaseModel):
    """Overrides and knobs of ``make_plan``; ``None`` means "choose automatically"."""

    model_config = ConfigDict(extra="forbid")

    target_spacing: tuple[float, float, float] | None = None
    anisotropy_threshold: float = Field(3.0, gt=1)
    memory_budget_gb: float = Field(8.0, gt=0)
    patch_size_3d: tuple[int, int, int] | None = None
    # a 3d_lowres configuration (predict --fast): None proposes it by the plan's rule
    low_resolution: bool | None = None
    patch_size_2d: tuple[int, int] | None = None
    batch_size_3d: int | None = Field(None, ge=1)
    batch_size_2d: int | None = Field(None, ge=1)
    normalization: NormalizationScheme | None = None
    image_resample_order: int = Field(1, ge=0, le=5)
    label_resampling: LabelResampling = LabelResampling.ONEHOT_LINEAR
    foreground_fraction: float = Field(1.0 / 3.0, ge=0, le=1)
    crop_to_nonzero: bool = True
    intensity_samples_per_case: int = Field(10_000, ge=100)
    border_weights: BorderWeightOptions = BorderWeightOptions()
    seed: int = 0


def load_plan_options(path: Path | None) -> PlanOptions:
    """Read plan options from a YAML file (``None``: all defaults).

    Raises:
        ConfigError: the file is missing, not YAML, or has unknown/invalid keys.
    """
    return load_yaml_model(path, PlanOptions)
