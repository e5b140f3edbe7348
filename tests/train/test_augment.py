"""Tests of batched training augmentation (medseg.train.augment)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pydantic
import pytest
import torch

from medseg.errors import AugmentationError, GeometryMismatchError
from medseg.train.augment import (
    WEIGHTS_PAD_VALUE,
    AugmentationConfig,
    AugmentationParameters,
    Augmenter,
    apply,
    rotation_scale_affine,
    sample_parameters,
)

ALWAYS = AugmentationConfig(
    rotation_probability=1,
    scale_probability=1,
    noise_probability=1,
    brightness_probability=1,
    contrast_probability=1,
    gamma_probability=1,
    gamma_invert_probability=0.5,
)
NEVER = AugmentationConfig(
    rotation_probability=0,
    scale_probability=0,
    mirror_probability=0,
    noise_probability=0,
    brightness_probability=0,
    contrast_probability=0,
    gamma_probability=0,
)


def make_batch(
    spatial: tuple[int, ...], *, batch: int = 2, channels: int = 2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random image, a label with values {0, 2, 5, 7} and weights, all asymmetric."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, channels, *spatial, generator=generator)
    values = torch.tensor([0, 2, 5, 7], dtype=torch.uint8)
    label = values[torch.randint(0, 4, (batch, *spatial), generator=generator)]
    weights = torch.rand(batch, *spatial, generator=generator) + 0.5
    return image, label, weights


def with_affine(parameters: AugmentationParameters, affine: torch.Tensor) -> AugmentationParameters:
    return dataclasses.replace(parameters, affine=affine)


def identity(batch: int, dims: int, **changes: torch.Tensor) -> AugmentationParameters:
    base = AugmentationParameters.identity(batch_size=batch, spatial_dims=dims)
    return dataclasses.replace(base, **changes)


def assert_same_parameters(a: AugmentationParameters, b: AugmentationParameters) -> None:
    for field in dataclasses.fields(a):
        left, right = getattr(a, field.name), getattr(b, field.name)
        if isinstance(left, torch.Tensor):
            assert torch.equal(left, right), field.name
        else:
            assert left == right, field.name


# --- identity and reproducibility -------------------------------------------------------------


@pytest.mark.parametrize("spatial", [(12, 10), (8, 9, 10)])
def test_identity_parameters_reproduce_inputs_exactly(spatial: tuple[int, ...]) -> None:
    image, label, weights = make_batch(spatial)
    out = apply(identity(2, len(spatial)), image=image, label=label, weights=weights)
    assert torch.equal(out.image, image)
    assert torch.equal(out.label, label) and out.label.dtype == label.dtype
    assert out.weights is not None and torch.equal(out.weights, weights)


def test_probabilities_zero_sample_identity_parameters() -> None:
    generator = torch.Generator().manual_seed(3)
    drawn = sample_parameters(NEVER, batch_size=5, spatial_dims=3, generator=generator)
    expected = identity(5, 3, noise_seed=drawn.noise_seed)
    assert_same_parameters(drawn, expected)


def test_zero_rotation_unit_scale_is_exact_identity_affine() -> None:
    affine = rotation_scale_affine(torch.zeros(2, 3), torch.ones(2))
    assert torch.equal(affine, identity(2, 3).affine)
    image, label, weights = make_batch((6, 7, 8))
    out = apply(identity(2, 3, affine=affine), image=image, label=label, weights=weights)
    assert torch.equal(out.image, image) and torch.equal(out.label, label)


def test_inputs_are_not_modified() -> None:
    image, label, weights = make_batch((16, 16))
    copies = image.clone(), label.clone(), weights.clone()
    Augmenter(ALWAYS, seed=1)(image=image, label=label, weights=weights)
    assert all(torch.equal(a, b) for a, b in zip((image, label, weights), copies, strict=True))


def test_same_seed_gives_same_parameters_and_outputs() -> None:
    image, label, weights = make_batch((16, 16, 16))
    first, second = Augmenter(ALWAYS, seed=7), Augmenter(ALWAYS, seed=7)
    for _ in range(2):  # successive batches too
        out1 = first(image=image, label=label, weights=weights)
        out2 = second(image=image, label=label, weights=weights)
        assert first.last_parameters is not None and second.last_parameters is not None
        assert_same_parameters(first.last_parameters, second.last_parameters)
        assert all(torch.equal(a, b) for a, b in zip(out1, out2, strict=True))


def test_different_seed_gives_different_parameters_and_outputs() -> None:
    image, label, _ = make_batch((16, 16, 16))
    first, second = Augmenter(ALWAYS, seed=7), Augmenter(ALWAYS, seed=8)
    out1, out2 = first(image=image, label=label), second(image=image, label=label)
    assert first.last_parameters is not None and second.last_parameters is not None
    assert not torch.equal(first.last_parameters.affine, second.last_parameters.affine)
    assert not torch.equal(first.last_parameters.gamma, second.last_parameters.gamma)
    assert not torch.equal(out1.image, out2.image)


def test_apply_is_deterministic() -> None:
    image, label, weights = make_batch((16, 16))
    params = sample_parameters(
        ALWAYS, batch_size=2, spatial_dims=2, generator=torch.Generator().manual_seed(0)
    )
    out1 = apply(params, image=image, label=label, weights=weights)
    out2 = apply(params, image=image, label=label, weights=weights)
    assert all(torch.equal(a, b) for a, b in zip(out1, out2, strict=True))


@pytest.mark.parametrize(
    ("field", "config", "expected"),
    [
        ("rotation", AugmentationConfig(), 0.2),
        ("scale", AugmentationConfig(), 0.2),
        ("flip", AugmentationConfig(), 0.5),
        ("noise_sigma", AugmentationConfig(), 0.1),
        ("brightness", AugmentationConfig(), 0.15),
        ("contrast", AugmentationConfig(), 0.15),
        ("gamma", AugmentationConfig(), 0.3),
        ("gamma_inverted", AugmentationConfig(gamma_invert_probability=0.5), 0.15),
    ],
)
def test_transforms_are_applied_with_configured_probability(
    field: str, config: AugmentationConfig, expected: float
) -> None:
    n = 20_000
    params = sample_parameters(
        config, batch_size=n, spatial_dims=3, generator=torch.Generator().manual_seed(0)
    )
    linear = params.affine[:, :, :3]
    scales = torch.linalg.matrix_norm(linear, ord=2)
    applied = {
        "rotation": ~torch.isclose(linear / scales[:, None, None], torch.eye(3)).all(dim=(1, 2)),
        "scale": ~torch.isclose(scales, torch.ones(n), atol=1e-5),
        "flip": params.flip.float().mean(dim=1),
        "noise_sigma": params.noise_sigma > 0,
        "brightness": params.brightness != 1,
        "contrast": params.contrast != 1,
        "gamma": params.gamma != 1,
        "gamma_inverted": params.gamma_inverted,
    }[field]
    assert applied.float().mean().item() == pytest.approx(expected, abs=0.015)


@pytest.mark.parametrize(
    ("field", "low", "high"),
    [
        ("noise_sigma", 0.0, 0.1),
        ("brightness", 0.75, 1.25),
        ("contrast", 0.75, 1.25),
        ("gamma", 0.7, 1.5),
    ],
)
def test_sampled_values_stay_in_default_ranges(field: str, low: float, high: float) -> None:
    params = sample_parameters(
        ALWAYS, batch_size=2000, spatial_dims=2, generator=torch.Generator().manual_seed(1)
    )
    values = getattr(params, field)
    assert values.min() >= low and values.max() <= high
    if field in ("contrast", "gamma"):  # nnU-Net: below and above 1 equally often
        assert (values < 1).float().mean().item() == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize(
    ("bounds", "below_fraction"),
    [((0.7, 1.5), 0.5), ((0.5, 0.8), 1.0), ((1.2, 1.6), 0.0), ((0.9, 1.0), 1.0)],
)
def test_gamma_and_contrast_draws_stay_in_any_range(
    bounds: tuple[float, float], below_fraction: float
) -> None:
    config = ALWAYS.model_copy(update={"gamma_range": bounds, "contrast_range": bounds})
    params = sample_parameters(
        config, batch_size=2000, spatial_dims=2, generator=torch.Generator().manual_seed(4)
    )
    for values in (params.gamma, params.contrast):
        assert values.min() >= bounds[0] and values.max() <= bounds[1]
        assert (values < 1).float().mean().item() == pytest.approx(below_fraction, abs=0.05)


def test_rotation_angles_within_range_and_restricted_to_in_plane() -> None:
    config = ALWAYS.model_copy(update={"rotation_axes": (2,), "scale_probability": 0.0})
    params = sample_parameters(
        config, batch_size=500, spatial_dims=3, generator=torch.Generator().manual_seed(2)
    )
    linear = params.affine[:, :, :3]
    # Rotation about axis 2 only: axis 2 is untouched, the (0, 1) block is a plane rotation.
    assert torch.equal(linear[:, 2], torch.tensor([0.0, 0.0, 1.0]).expand(500, -1))
    assert torch.equal(linear[:, :2, 2], torch.zeros(500, 2))
    angles = torch.rad2deg(torch.atan2(linear[:, 0, 1], linear[:, 0, 0]))
    assert angles.abs().max() <= 30 + 1e-4 and angles.abs().max() > 25


# --- spatial transforms -----------------------------------------------------------------------


def rotation_params(angles: list[float], batch: int = 2) -> AugmentationParameters:
    degrees = torch.tensor(angles, dtype=torch.float32).expand(batch, -1)
    affine = rotation_scale_affine(degrees, torch.ones(batch))
    return identity(batch, 2 if len(angles) == 1 else 3, affine=affine)


# (angles, torch.rot90 k, rot90 dims among spatial axes)
ROTATIONS = [
    ([90.0], 1, (0, 1)),
    ([-90.0], -1, (0, 1)),
    ([180.0], 2, (0, 1)),
    ([90.0, 0.0, 0.0], 1, (1, 2)),
    ([0.0, 90.0, 0.0], 1, (2, 0)),
    ([0.0, 0.0, 90.0], 1, (0, 1)),
    ([0.0, 0.0, -90.0], -1, (0, 1)),
]


@pytest.mark.parametrize(("angles", "k", "plane"), ROTATIONS)
def test_right_angle_rotation_matches_rot90(
    angles: list[float], k: int, plane: tuple[int, int]
) -> None:
    spatial = (10, 10) if len(angles) == 1 else (8, 8, 8)
    image, label, weights = make_batch(spatial)
    out = apply(rotation_params(angles), image=image, label=label, weights=weights)
    image_dims, label_dims = (plane[0] + 2, plane[1] + 2), (plane[0] + 1, plane[1] + 1)
    assert torch.equal(out.label, torch.rot90(label, k, label_dims))
    torch.testing.assert_close(out.image, torch.rot90(image, k, image_dims), atol=1e-5, rtol=0)
    assert out.weights is not None
    torch.testing.assert_close(out.weights, torch.rot90(weights, k, label_dims), atol=1e-5, rtol=0)


def test_rotation_on_non_square_grid_is_rigid_in_voxels() -> None:
    # 8 x 12: rotating 90 degrees about the centre (3.5, 5.5) maps the central 8 x 8 block
    # (columns 2..9) onto itself as rot90 would; a normalized-coordinate rotation would shear.
    image, label, _ = make_batch((8, 12))
    out = apply(rotation_params([90.0]), image=image, label=label)
    block = slice(2, 10)
    assert torch.equal(out.label[:, :, block], torch.rot90(label[:, :, block], 1, (1, 2)))
    expected = torch.rot90(image[..., block], 1, (2, 3))
    torch.testing.assert_close(out.image[..., block], expected, atol=1e-5, rtol=0)


def test_scale_two_samples_every_other_voxel() -> None:
    # Odd size 9, centre voxel 4: output voxel i reads input voxel 2 * i - 4 exactly.
    image, label, weights = make_batch((9, 9))
    affine = rotation_scale_affine(torch.zeros(2, 1), torch.full((2,), 2.0))
    out = apply(identity(2, 2, affine=affine), image=image, label=label, weights=weights)
    inner = slice(2, 7)
    assert torch.equal(out.label[:, inner, inner], label[:, ::2, ::2])
    torch.testing.assert_close(out.image[..., inner, inner], image[..., ::2, ::2])
    outside = torch.ones(9, 9, dtype=torch.bool)
    outside[inner, inner] = False
    assert (out.label[:, outside] == 0).all()
    assert (out.image[:, :, outside] == 0).all()
    assert out.weights is not None and (out.weights[:, outside] == WEIGHTS_PAD_VALUE).all()


@pytest.mark.parametrize(
    ("spatial", "flips"),
    [
        ((6, 7), [[True, False], [False, True]]),
        ((6, 7), [[True, True], [False, False]]),
        ((4, 5, 6), [[True, False, True], [False, True, False]]),
        ((4, 5, 6), [[True, True, True], [False, False, True]]),
    ],
)
def test_mirroring_flips_exactly(spatial: tuple[int, ...], flips: list[list[bool]]) -> None:
    image, label, weights = make_batch(spatial)
    flip = torch.tensor(flips)
    out = apply(identity(2, len(spatial), flip=flip), image=image, label=label, weights=weights)
    assert out.weights is not None
    for b in range(2):
        axes = [axis for axis in range(len(spatial)) if flips[b][axis]]
        assert torch.equal(out.image[b], image[b].flip([a + 1 for a in axes]))
        assert torch.equal(out.label[b], label[b].flip(axes))
        assert torch.equal(out.weights[b], weights[b].flip(axes))


def test_mirror_axes_restrict_flips() -> None:
    config = NEVER.model_copy(update={"mirror_probability": 1.0, "mirror_axes": (1, 2)})
    params = sample_parameters(
        config, batch_size=4, spatial_dims=3, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(params.flip, torch.tensor([[False, True, True]]).expand(4, -1))


@pytest.mark.parametrize("spatial", [(24, 20), (12, 14, 10)])
def test_random_spatial_augmentation_never_blends_label_values(spatial: tuple[int, ...]) -> None:
    image, label, weights = make_batch(spatial, batch=8)
    out = Augmenter(ALWAYS, seed=5)(image=image, label=label, weights=weights)
    assert set(out.label.unique().tolist()) <= set(label.unique().tolist())
    assert out.label.dtype == label.dtype


SPATIAL_ONLY = NEVER.model_copy(
    update={"rotation_probability": 1.0, "scale_probability": 1.0, "mirror_probability": 0.5}
)


@pytest.mark.parametrize("spatial", [(32, 32), (20, 20, 20)])
def test_weights_follow_labels(spatial: tuple[int, ...]) -> None:
    # Weights = binary label: where the interpolated weight is exactly 0 or 1 inside the field of
    # view, the nearest-neighbour label must agree; outside, weights take the neutral pad value.
    grid = torch.meshgrid(*(torch.arange(n) for n in spatial), indexing="ij")
    squared_distance = sum((g - n / 2.5) ** 2 for g, n in zip(grid, spatial, strict=True))
    label = (squared_distance < (spatial[0] / 4) ** 2).long().expand(4, *spatial).clone()
    ones = torch.ones(4, 1, *spatial)
    params = sample_parameters(
        SPATIAL_ONLY,
        batch_size=4,
        spatial_dims=len(spatial),
        generator=torch.Generator().manual_seed(9),
    )
    out = apply(params, image=ones, label=label, weights=label.float())
    inside = apply(params, image=ones, label=torch.ones_like(label)).label == 1
    fully_outside = out.image[:, 0] == 0  # no input voxel contributes
    assert out.weights is not None
    exact = ((out.weights < 1e-5) | (out.weights > 1 - 1e-5)) & inside
    assert exact.sum() > 0.8 * inside.sum()
    assert torch.equal(out.weights[exact].round().long(), out.label[exact])
    assert fully_outside.any()
    assert (out.weights[fully_outside] == WEIGHTS_PAD_VALUE).all()


# --- intensity transforms ---------------------------------------------------------------------


def ramp(low: float = -1.0, high: float = 3.0) -> torch.Tensor:
    """(2, 2, 64, 64) image with values evenly spread over [low, high] in every channel."""
    values = torch.linspace(low, high, 64 * 64).reshape(64, 64)
    return values.expand(2, 2, 64, 64).clone()


def gamma_reference(x: torch.Tensor, gamma: float, *, inverted: bool) -> torch.Tensor:
    lo, hi = x.amin(), x.amax()
    unit = (x - lo) / (hi - lo)
    mapped = 1 - (1 - unit) ** gamma if inverted else unit**gamma
    return lo + mapped * (hi - lo)


def per_sample(value: float, batch: int = 2) -> torch.Tensor:
    return torch.full((batch,), value)


CheckFn = Callable[[torch.Tensor, torch.Tensor], None]


def check_equal(expected: Callable[[torch.Tensor], torch.Tensor]) -> CheckFn:
    def check(before: torch.Tensor, after: torch.Tensor) -> None:
        torch.testing.assert_close(after, expected(before), atol=1e-5, rtol=1e-5)

    return check


def check_mean_std_kept(before: torch.Tensor, after: torch.Tensor) -> None:
    torch.testing.assert_close(after.mean(dim=(2, 3)), before.mean(dim=(2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(after.std(dim=(2, 3)), before.std(dim=(2, 3)), atol=1e-5, rtol=0)
    assert not torch.allclose(after, before)


def check_contrast_clipped(before: torch.Tensor, after: torch.Tensor) -> None:
    assert after.min() >= before.min() and after.max() <= before.max()
    assert after.min() == before.min() and after.max() == before.max()  # clipping reached


# (parameter changes, retain_stats, check of (before, after))
INTENSITY_CASES = {
    "gamma_one": ({"gamma": per_sample(1.0)}, True, check_equal(lambda x: x)),
    "brightness_exact": ({"brightness": per_sample(1.2)}, True, check_equal(lambda x: x * 1.2)),
    "contrast_halves_deviation": (
        {"contrast": per_sample(0.5)},
        True,
        check_equal(lambda x: (x - x.mean()) * 0.5 + x.mean()),
    ),
    "contrast_clipped_to_range": ({"contrast": per_sample(1.5)}, True, check_contrast_clipped),
    "gamma_two": (
        {"gamma": per_sample(2.0)},
        False,
        check_equal(lambda x: gamma_reference(x, 2.0, inverted=False)),
    ),
    "gamma_half_inverted": (
        {"gamma": per_sample(0.5), "gamma_inverted": torch.ones(2, dtype=torch.bool)},
        False,
        check_equal(lambda x: gamma_reference(x, 0.5, inverted=True)),
    ),
    "gamma_retains_stats": ({"gamma": per_sample(1.4)}, True, check_mean_std_kept),
}


@pytest.mark.parametrize("case", INTENSITY_CASES.values(), ids=INTENSITY_CASES.keys())
def test_intensity_transform_on_known_input(case: tuple[dict, bool, CheckFn]) -> None:
    changes, retain_stats, check = case
    image = ramp()
    params = dataclasses.replace(identity(2, 2, **changes), gamma_retain_stats=retain_stats)
    out = apply(params, image=image, label=torch.zeros(2, 64, 64, dtype=torch.int64))
    check(image, out.image)


def test_contrast_keeps_mean() -> None:
    image = ramp(-2.0, 5.0) ** 2  # skewed, so the mean is not the mid-range
    params = identity(2, 2, contrast=torch.tensor([0.6, 0.9]))
    out = apply(params, image=image, label=torch.zeros(2, 64, 64, dtype=torch.int64))
    torch.testing.assert_close(out.image.mean(dim=(2, 3)), image.mean(dim=(2, 3)))


@pytest.mark.parametrize("sigma", [0.05, 0.3])
def test_noise_has_requested_sigma_on_constant_image(sigma: float) -> None:
    image = torch.full((2, 1, 256, 256), 0.5)
    params = identity(2, 2, noise_sigma=torch.tensor([sigma, 0.0]), noise_seed=torch.tensor([4, 5]))
    out = apply(params, image=image, label=torch.zeros(2, 256, 256, dtype=torch.int64))
    noisy = out.image[0]
    assert noisy.std().item() == pytest.approx(sigma, rel=0.02)
    assert noisy.mean().item() == pytest.approx(0.5, abs=4 * sigma / 256)
    assert torch.equal(out.image[1], image[1])  # sigma 0: untouched


def test_noise_depends_on_seed_only() -> None:
    image = torch.zeros(2, 1, 32, 32)
    params = identity(2, 2, noise_sigma=per_sample(0.1), noise_seed=torch.tensor([11, 11]))
    out = apply(params, image=image, label=torch.zeros(2, 32, 32, dtype=torch.int64))
    assert torch.equal(out.image[0], out.image[1])


def test_intensity_transforms_leave_label_and_weights_alone() -> None:
    image, label, weights = make_batch((16, 16))
    params = dataclasses.replace(
        sample_parameters(
            ALWAYS, batch_size=2, spatial_dims=2, generator=torch.Generator().manual_seed(0)
        ),
        affine=identity(2, 2).affine,
        flip=torch.zeros(2, 2, dtype=torch.bool),
    )
    out = apply(params, image=image, label=label, weights=weights)
    assert torch.equal(out.label, label)
    assert out.weights is not None and torch.equal(out.weights, weights)
    assert not torch.equal(out.image, image)


# --- shapes, devices, errors ------------------------------------------------------------------


@pytest.mark.parametrize("spatial", [(20, 24), (10, 12, 14)])
@pytest.mark.parametrize("with_weights", [True, False])
def test_shapes_and_dtypes_are_kept(spatial: tuple[int, ...], with_weights: bool) -> None:
    image, label, weights = make_batch(spatial, batch=3, channels=2)
    out = Augmenter(ALWAYS, seed=0)(
        image=image, label=label.long(), weights=weights if with_weights else None
    )
    assert out.image.shape == image.shape and out.image.dtype == image.dtype
    assert out.label.shape == label.shape and out.label.dtype == torch.int64
    assert (out.weights is None) == (not with_weights)
    assert torch.isfinite(out.image).all()


def test_full_size_3d_batch_runs() -> None:
    # Runtime is measured outside the suite (see the module report); this only exercises the size.
    image, label, weights = make_batch((64, 64, 64), batch=2, channels=1)
    out = Augmenter(ALWAYS, seed=0)(image=image, label=label, weights=weights)
    assert out.image.shape == (2, 1, 64, 64, 64)


def test_parameters_move_between_devices() -> None:
    params = sample_parameters(
        ALWAYS, batch_size=2, spatial_dims=3, generator=torch.Generator().manual_seed(0)
    )
    assert_same_parameters(params.to("cpu"), params)


ERROR_CASES = [
    (
        "mirror axis missing in 2D",
        lambda: sample_parameters(
            AugmentationConfig(mirror_axes=(0, 2)),
            batch_size=1,
            spatial_dims=2,
            generator=torch.Generator(),
        ),
        AugmentationError,
        "mirror_axes=(0, 2)",
    ),
    (
        "spatial dims",
        lambda: sample_parameters(
            AugmentationConfig(), batch_size=1, spatial_dims=4, generator=torch.Generator()
        ),
        AugmentationError,
        "spatial_dims must be 2 or 3",
    ),
    (
        "label grid",
        lambda: apply(
            identity(2, 2), image=torch.zeros(2, 1, 8, 8), label=torch.zeros(2, 8, 9).long()
        ),
        GeometryMismatchError,
        "label has shape (2, 8, 9)",
    ),
    (
        "batch size",
        lambda: apply(
            identity(3, 2), image=torch.zeros(2, 1, 8, 8), label=torch.zeros(2, 8, 8).long()
        ),
        AugmentationError,
        "batch size 2 != parameters batch size 3",
    ),
    (
        "float label",
        lambda: apply(identity(2, 2), image=torch.zeros(2, 1, 8, 8), label=torch.zeros(2, 8, 8)),
        AugmentationError,
        "label must hold integers",
    ),
    (
        "2D parameters, 3D image",
        lambda: apply(
            identity(2, 2), image=torch.zeros(2, 1, 4, 4, 4), label=torch.zeros(2, 4, 4, 4).long()
        ),
        AugmentationError,
        "2 spatial axes",
    ),
    (
        "inconsistent parameters",
        lambda: identity(2, 2, flip=torch.zeros(2, 3, dtype=torch.bool)),
        AugmentationError,
        "parameter flip has shape (2, 3), expected (2, 2)",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_errors_name_the_problem(call: Callable[[], object], error: type, message: str) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


@pytest.mark.parametrize(
    "options",
    [
        {"rotation_probabilty": 0.1},
        {"scale_range": (1.4, 0.7)},
        {"scale_range": (0.0, 1.0)},
        {"noise_sigma_range": (-0.1, 0.1)},
        {"mirror_axes": (0, 0)},
        {"rotation_axes": (3,)},
        {"gamma_probability": 1.5},
    ],
)
def test_invalid_config_is_rejected(options: dict) -> None:
    with pytest.raises(pydantic.ValidationError):
        AugmentationConfig(**options)
