"""Plan choices from fingerprints, and overrides from YAML."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.errors import ConfigError
from medseg.preprocess.config import (
    NormalizationScheme,
    PlanOptions,
    load_plan_options,
)
from medseg.preprocess.fingerprint import DatasetFingerprint, IntensityStatistics
from medseg.preprocess.plan import make_plan, target_spacing

STATS = IntensityStatistics(
    mean=50.0,
    std=20.0,
    percentile_00_5=-80.0,
    percentile_50_0=45.0,
    percentile_99_5=210.0,
    minimum=-200.0,
    maximum=900.0,
)


def _fingerprint(
    spacings: list[list[float]], shapes: list[list[int]], modality: str = "CT"
) -> DatasetFingerprint:
    return DatasetFingerprint(
        n_cases=len(spacings),
        modality=modality,
        spacings=spacings,
        cropped_shapes=shapes,
        intensity=STATS,
        label_values=[0, 1, 2],
    )


@pytest.mark.parametrize(
    ("spacings", "expected"),
    [
        # isotropic-ish: the median per axis
        ([[1.0, 1.0, 1.0], [0.8, 0.8, 1.2], [0.9, 0.9, 2.0]], [0.9, 0.9, 1.2]),
        # anisotropic (5 mm vs 0.7 mm): the coarse axis takes its 10th percentile
        ([[0.7, 0.7, 5.0]] * 8 + [[0.7, 0.7, 3.0]] * 2, [0.7, 0.7, 3.0]),
        # the 10th percentile never goes below the other axes
        ([[2.0, 2.0, 8.0]] * 6 + [[2.0, 2.0, 1.0]] * 4, [2.0, 2.0, 2.00001]),
    ],
)
def test_target_spacing(spacings: list[list[float]], expected: list[float]) -> None:
    fingerprint = _fingerprint(spacings, [[100, 100, 50]] * len(spacings))
    assert target_spacing(fingerprint, anisotropy_threshold=3.0) == pytest.approx(
        expected, abs=1e-4
    )


@pytest.mark.parametrize("budget_gb", [2.0, 8.0, 24.0])
def test_patch_fits_the_memory_budget_and_the_network_strides(budget_gb: float) -> None:
    fingerprint = _fingerprint([[0.8, 0.8, 1.0]] * 10, [[512, 512, 300]] * 10)
    plan = make_plan(
        fingerprint,
        options=PlanOptions(memory_budget_gb=budget_gb),
        label_names={0: "bg", 1: "a"},
        manifest_sha256="0" * 64,
    )
    config = plan.configurations["3d"]
    strides = np.prod(np.array(config.pool_strides), axis=0)
    assert all(p % s == 0 for p, s in zip(config.patch_size, strides, strict=True))
    budget = 128**3 * budget_gb / 8
    assert np.prod(config.patch_size) <= budget
    assert config.batch_size >= 2
    assert len(config.pool_strides) >= 4


def test_hippocampus_like_data_gets_an_nnunet_like_plan() -> None:
    fingerprint = _fingerprint([[1.0, 1.0, 1.0]] * 20, [[35, 50, 36]] * 20, modality="MR")
    plan = make_plan(
        fingerprint, options=PlanOptions(), label_names={0: "bg"}, manifest_sha256="0" * 64
    )
    assert plan.configurations["3d"].patch_size == [40, 56, 40]  # nnU-Net chooses the same
    assert plan.normalization.scheme is NormalizationScheme.ZSCORE
    assert plan.configurations["2d"].slice_axis == 2


def test_ct_normalization_uses_foreground_percentiles_and_moments() -> None:
    fingerprint = _fingerprint([[1.0, 1.0, 3.0]] * 4, [[100, 100, 40]] * 4)
    plan = make_plan(
        fingerprint, options=PlanOptions(), label_names={0: "bg"}, manifest_sha256="0" * 64
    )
    normalization = plan.normalization
    assert normalization.scheme is NormalizationScheme.CT
    assert (normalization.clip_low, normalization.clip_high) == (-80.0, 210.0)
    assert (normalization.mean, normalization.std) == (50.0, 20.0)


def test_yaml_overrides_win_and_unknown_keys_are_errors(tmp_path: Path) -> None:
    good = tmp_path / "plan.yaml"
    good.write_text(
        "target_spacing: [1.5, 1.5, 2.0]\npatch_size_3d: [64, 64, 32]\nnormalization: zscore\n"
    )
    options = load_plan_options(good)
    fingerprint = _fingerprint([[1.0, 1.0, 1.0]] * 3, [[100, 100, 100]] * 3)
    plan = make_plan(fingerprint, options=options, label_names={0: "bg"}, manifest_sha256="0" * 64)
    assert plan.target_spacing == [1.5, 1.5, 2.0]
    assert plan.configurations["3d"].patch_size == [64, 64, 32]
    assert plan.normalization.scheme is NormalizationScheme.ZSCORE
    bad = tmp_path / "bad.yaml"
    bad.write_text("target_spacng: [1, 1, 1]\nborder_weights: {w0: 10, sigma: 5}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: .*target_spacng: Extra inputs") as caught:
        load_plan_options(bad)
    assert "border_weights.sigma" in str(caught.value)


def test_plan_round_trips_through_json(tmp_path: Path) -> None:
    fingerprint = _fingerprint([[1.0, 1.0, 1.0]] * 3, [[60, 60, 60]] * 3)
    plan = make_plan(
        fingerprint, options=PlanOptions(), label_names={0: "bg", 1: "x"}, manifest_sha256="0" * 64
    )
    again = type(plan).load(plan.save(tmp_path / "plan.json"))
    assert again == plan and again.digest() == plan.digest()


@pytest.mark.parametrize(
    ("spacing", "shape", "forced", "expected"),
    [
        # whole-body CT: the median image is far larger than the 3D patch -> 3 mm
        ([0.8, 0.8, 1.0], [512, 512, 300], None, [3.0, 3.0, 3.0]),
        # thick slices keep their spacing, the fine axes go to 3 mm
        ([0.7, 0.7, 5.0], [512, 512, 60], None, [3.0, 3.0, 5.0]),
        # a hippocampus fits one patch: no low resolution unless forced
        ([1.0, 1.0, 1.0], [35, 50, 36], None, None),
        # already coarse (the phantoms' 3 x 3 x 4 mm): twice the finest spacing
        ([3.0, 3.0, 4.0], [49, 39, 33], True, [6.0, 6.0, 6.0]),
        ([0.8, 0.8, 1.0], [512, 512, 300], False, None),
    ],
)
def test_the_low_resolution_configuration_is_proposed_where_the_image_outgrows_the_patch(
    spacing: list[float], shape: list[int], forced: bool | None, expected: list[float] | None
) -> None:
    fingerprint = _fingerprint([spacing] * 6, [shape] * 6)
    options = PlanOptions(target_spacing=spacing, low_resolution=forced)
    plan = make_plan(fingerprint, options=options, label_names={0: "bg"}, manifest_sha256="0" * 64)
    if expected is None:
        assert plan.low_resolution == [] and "3d_lowres" not in plan.configurations
        return
    lowres = plan.configurations["3d_lowres"]
    assert plan.low_resolution == ["3d_lowres"]
    assert lowres.target_spacing == pytest.approx(expected)
    assert plan.configurations["3d"].target_spacing is None
    assert plan.for_configuration("3d_lowres").target_spacing == pytest.approx(expected)
    assert plan.for_configuration("3d") is plan
    strides = np.prod(np.array(lowres.pool_strides), axis=0)
    assert all(p % s == 0 for p, s in zip(lowres.patch_size, strides, strict=True))
    assert np.prod(lowres.patch_size) <= 128**3
    assert plan.digest() != plan.for_configuration("3d_lowres").digest()
