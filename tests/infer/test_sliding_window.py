"""Sliding-window prediction: coverage, Gaussian weights, padding, mirroring.

Mirroring is checked with networks whose output changes when their input is flipped (a
per-voxel network gives the same answer flipped or not, so it cannot tell whether mirroring
happened): ``RampNet`` adds a ramp of the voxel's position in its window, so the mirrored
average is known in closed form; ``_fixed_conv`` is a convolution with an asymmetric kernel.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from torch import nn

from medseg.infer import sliding_window
from medseg.infer.options import PredictionOptions
from medseg.infer.predictor import PackagedModel, predict_scan
from medseg.infer.sliding_window import (
    gaussian_importance,
    predict_probabilities,
    sliding_window_predict,
    window_starts,
    windows_per_call,
)
from medseg.preprocess.plan import Plan
from tests.phantom_plan import plan_phantoms
from tests.phantoms import small_phantom

FlipSets = list[tuple[int, ...]]


class ThresholdNet(nn.Module):
    """Logits [0, x]: class 1 wherever the intensity is positive; translation equivariant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x[:, :1]), 10 * x[:, :1]], dim=1)


class RampNet(nn.Module):
    """Logits ``[0, x + Σ_a slope_a t_a]``, ``t_a`` the voxel's index along axis ``a`` of the
    window the network is given: flipping the input changes the output by a known amount."""

    def __init__(self, slopes: Sequence[float]) -> None:
        super().__init__()
        self.slopes = tuple(slopes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = x[:, :1].clone()
        for axis, slope in enumerate(self.slopes):
            shape = [1] * x.ndim
            shape[axis + 2] = x.shape[axis + 2]
            ramp = torch.arange(x.shape[axis + 2], dtype=x.dtype, device=x.device)
            logit = logit + slope * ramp.reshape(shape)
        return torch.cat([torch.zeros_like(logit), logit], dim=1)


class MirroredInside(nn.Module):
    """``network`` with the test-time mirroring done inside: the log of the mean over
    ``flip_sets`` of its softmax on the flipped window, flipped back. A sliding window without
    mirroring over it is the sliding window with mirroring over ``network``."""

    def __init__(self, network: nn.Module, flip_sets: FlipSets) -> None:
        super().__init__()
        self.network, self.flip_sets = network, flip_sets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _flipped_back_mean(self.network, x, self.flip_sets).log()


def _flipped_back_mean(
    network: nn.Module, batch: torch.Tensor, flip_sets: FlipSets
) -> torch.Tensor:
    """Mean over ``flip_sets`` (spatial axes) of ``softmax(network(flip(batch)))`` flipped
    back; ``batch`` is ``(B, C, *spatial)``."""
    predictions = []
    for axes in flip_sets:
        dims = [axis + 2 for axis in axes]
        predictions.append(torch.softmax(network(batch.flip(dims)), 1).flip(dims))
    return torch.stack(predictions).mean(0)


def _fixed_conv(dims: int, classes: int, seed: int) -> nn.Module:
    """A 3-wide convolution with fixed random weights: no kernel axis is symmetric, so its
    output changes when the input is flipped along any axis."""
    conv = (nn.Conv3d if dims == 3 else nn.Conv2d)(1, classes, 3, padding=1)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator))
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator))
    return conv.eval()


def _all_subsets(axes: Sequence[int]) -> FlipSets:
    return [s for r in range(len(axes) + 1) for s in itertools.combinations(axes, r)]


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def _ramp_by_hand(image: np.ndarray, slopes: dict[int, float], flip_sets: FlipSets) -> np.ndarray:
    """Softmax ``(2, *spatial)`` of ``RampNet`` on one window covering ``image`` (spatial
    array), averaged over ``flip_sets``: flipping axis ``a`` and back turns the voxel's window
    index ``i_a`` into ``n_a - 1 - i_a``, and leaves its own intensity in place. ``slopes``
    maps a volume axis to the slope the network applies along it."""
    index = np.indices(image.shape).astype(np.float64)
    class_1 = np.zeros(image.shape)
    for axes in flip_sets:
        logit = image.astype(np.float64).copy()
        for axis, slope in slopes.items():
            position = image.shape[axis] - 1 - index[axis] if axis in axes else index[axis]
            logit += slope * position
        class_1 += _sigmoid(logit)
    class_1 /= len(flip_sets)
    return np.stack([1 - class_1, class_1])


def _assert_distinct_from_other_flip_sets(
    expected: np.ndarray,
    image: np.ndarray,
    slopes: dict[int, float],
    flippable: Sequence[int],
    requested: Sequence[int],
) -> None:
    """The answer for ``requested`` axes is not the answer for any other choice among
    ``flippable``: the test would catch mirroring ignored or done along other axes."""
    for other in _all_subsets(flippable):
        if set(other) != set(requested):
            alternative = _ramp_by_hand(image, slopes, _all_subsets(other))
            assert np.abs(alternative - expected).max() > 0.02, other


@pytest.mark.parametrize(
    ("size", "patch", "overlap", "expected"),
    [
        (10, 10, 0.5, [0]),
        (5, 8, 0.5, [0]),
        (20, 8, 0.5, [0, 4, 8, 12]),
        (21, 8, 0.5, [0, 3, 6, 10, 13]),
    ],
)
def test_window_starts_cover_the_axis(
    size: int, patch: int, overlap: float, expected: list[int]
) -> None:
    starts = window_starts(size, patch, overlap=overlap)
    assert starts == expected
    assert starts[-1] + patch >= size


@pytest.mark.parametrize("patch", [(9, 8, 7), (64,), (5, 16)])
def test_gaussian_is_the_separable_profile_scaled_to_one_at_the_centre(patch: tuple) -> None:
    # sigma = size / 8 per axis, centred at (size - 1) / 2; an even axis has two centre voxels
    expected = np.ones(())
    for size in patch:
        centred = np.arange(size) - (size - 1) / 2
        expected = np.multiply.outer(expected, np.exp(-(centred**2) / (2 * (size / 8) ** 2)))
    expected /= expected.max()
    weights = gaussian_importance(patch)
    assert weights.dtype == torch.float32 and tuple(weights.shape) == patch
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-5, atol=0)


def test_gaussian_weights_that_underflow_get_the_smallest_positive_weight() -> None:
    # sigma = 0.64 voxels: beyond about 9 voxels from the centre exp() underflows to 0
    weights = gaussian_importance((64,), sigma_scale=0.01).numpy()
    exact = np.exp(-((np.arange(64) - 31.5) ** 2) / (2 * 0.64**2))
    exact /= exact.max()
    normal = exact > 1e-30
    assert normal.sum() == 16  # the rest of the axis is tiny or underflows in float32
    np.testing.assert_allclose(weights[normal], exact[normal], rtol=1e-4)
    underflowed = exact < 1e-46  # below the smallest float32 denormal
    assert underflowed.sum() == 46
    assert (weights > 0).all() and (weights[underflowed] == weights.min()).all()


@pytest.mark.parametrize("shape", [(1, 40, 37, 23), (1, 6, 50, 20), (1, 33, 29)])
def test_equivariant_network_gives_the_same_result_as_one_big_window(
    shape: tuple[int, ...],
) -> None:
    image = torch.randn(shape)
    patch = (16,) * (len(shape) - 1)
    probabilities = sliding_window_predict(
        ThresholdNet(), image, patch_size=patch, num_classes=2, batch_size=3
    )
    assert probabilities.shape == (2, *shape[1:])
    assert torch.allclose(probabilities.sum(0), torch.ones(shape[1:]), atol=1e-5)
    assert torch.allclose(
        probabilities, torch.softmax(ThresholdNet()(image[None]), 1)[0], atol=1e-5
    )


@pytest.mark.parametrize(
    ("spatial", "patch", "starts", "left_pad", "mirror_axes"),
    [
        ((20, 5), (8, 5), [0, 4, 8, 12], 0, ()),
        ((20, 5), (8, 5), [0, 4, 8, 12], 0, (0,)),
        ((21, 5), (8, 5), [0, 3, 6, 10, 13], 0, ()),
        ((5, 3), (8, 4), [0], 1, ()),  # padded by 3 along axis 0: 1 before, 2 after
        ((5, 3), (8, 4), [0], 1, (0,)),
    ],
)
def test_windows_are_blended_with_gaussian_weights_by_position_in_the_window(
    spatial: tuple[int, int],
    patch: tuple[int, int],
    starts: list[int],
    left_pad: int,
    mirror_axes: tuple[int, ...],
) -> None:
    # class 1 logit = 0.6 t, t the voxel's index along axis 0 of its window (7 - t flipped);
    # each window's vote is weighted by the Gaussian at t (sigma 1 voxel, centre 3.5); axis 1
    # has one window position, so its weights are common to all votes and cancel
    slope = 0.6
    probabilities = sliding_window_predict(
        RampNet((slope, 0.0)),
        torch.zeros((1, *spatial)),
        patch_size=patch,
        num_classes=2,
        mirror_axes=mirror_axes,
    )
    expected = np.zeros(spatial[0])
    for x in range(spatial[0]):
        position = x + left_pad
        t = np.array([position - s for s in starts if s <= position < s + 8], float)
        weights = np.exp(-((t - 3.5) ** 2) / 2)
        vote = _sigmoid(slope * t)
        if mirror_axes:
            vote = (vote + _sigmoid(slope * (7 - t))) / 2
        expected[x] = (weights * vote).sum() / weights.sum()
    np.testing.assert_allclose(
        probabilities[1].numpy(), np.repeat(expected[:, None], spatial[1], 1), atol=1e-6
    )


@pytest.mark.parametrize(
    ("spatial", "mirror_axes", "flip_sets"),
    [
        ((6, 7, 5), (), [()]),
        ((6, 7, 5), (0,), [(), (0,)]),
        ((6, 7, 5), (1,), [(), (1,)]),
        ((6, 7, 5), (2,), [(), (2,)]),
        ((6, 7, 5), (0, 2), [(), (0,), (2,), (0, 2)]),
        ((6, 7, 5), (0, 1, 2), [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]),
        ((9, 8), (1,), [(), (1,)]),
        ((9, 8), (0, 1), [(), (0,), (1,), (0, 1)]),
    ],
)
def test_mirroring_averages_the_flips_of_exactly_the_requested_axes(
    spatial: tuple[int, ...], mirror_axes: tuple[int, ...], flip_sets: FlipSets
) -> None:
    slopes = dict(enumerate([0.7, -0.45, 0.3][: len(spatial)]))
    image = np.random.default_rng(0).normal(0, 0.5, spatial).astype(np.float32)
    probabilities = sliding_window_predict(
        RampNet(slopes.values()),
        torch.from_numpy(image)[None],
        patch_size=spatial,  # one window: no blending, the mirrored average alone
        num_classes=2,
        mirror_axes=mirror_axes,
    )
    expected = _ramp_by_hand(image, slopes, flip_sets)
    np.testing.assert_allclose(probabilities.numpy(), expected, atol=2e-6)
    _assert_distinct_from_other_flip_sets(expected, image, slopes, range(len(spatial)), mirror_axes)


@pytest.mark.parametrize(
    ("mirror_axes", "flip_sets"),
    [((0,), [(), (0,)]), ((1, 2), [(), (1,), (2,), (1, 2)]), ((0, 1, 2), _all_subsets((0, 1, 2)))],
)
def test_mirroring_flips_the_image_as_well_as_the_output(
    mirror_axes: tuple[int, ...], flip_sets: FlipSets
) -> None:
    # a convolution reads the neighbours: flipping only the output (or only the input) shows
    network = _fixed_conv(3, classes=3, seed=1)
    image = torch.randn((1, 7, 6, 5), generator=torch.Generator().manual_seed(2))
    probabilities = sliding_window_predict(
        network, image, patch_size=(7, 6, 5), num_classes=3, mirror_axes=mirror_axes
    )
    expected = _flipped_back_mean(network, image[None], flip_sets)[0]
    torch.testing.assert_close(probabilities, expected, atol=1e-6, rtol=0)
    for other in _all_subsets((0, 1, 2)):
        if set(other) != set(mirror_axes):
            alternative = _flipped_back_mean(network, image[None], _all_subsets(other))[0]
            assert (alternative - expected).abs().max() > 0.02, other


@pytest.mark.parametrize(
    ("spatial", "patch"), [((20, 13, 11), (8, 8, 8)), ((9, 30, 6), (12, 8, 8))]
)
def test_each_window_is_mirrored_on_its_own(
    spatial: tuple[int, ...], patch: tuple[int, ...]
) -> None:
    # overlapping windows (and padding for the second shape): mirroring happens per window,
    # before the Gaussian blending, as if the network itself averaged over the flips
    network = _fixed_conv(3, classes=2, seed=3)
    image = torch.randn((1, *spatial), generator=torch.Generator().manual_seed(4))
    flip_sets = [(), (0,), (2,), (0, 2)]
    mirrored = sliding_window_predict(
        network, image, patch_size=patch, num_classes=2, mirror_axes=(0, 2), batch_size=3
    )
    expected = sliding_window_predict(
        MirroredInside(network, flip_sets), image, patch_size=patch, num_classes=2, batch_size=3
    )
    torch.testing.assert_close(mirrored, expected, atol=1e-5, rtol=0)
    plain = sliding_window_predict(network, image, patch_size=patch, num_classes=2)
    assert (plain - mirrored).abs().max() > 0.02


class ReusedOutput(nn.Module):
    """``network`` returning its logits in one buffer that each call overwrites, as an
    OpenVINO request's shared output memory does."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.buffer = torch.empty(0)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.network(batch)
        if self.buffer.shape != logits.shape:
            self.buffer = torch.empty_like(logits)
        return self.buffer.copy_(logits)


def test_an_output_buffer_the_next_call_overwrites_gives_the_same_mirrored_mean() -> None:
    network = _fixed_conv(3, classes=2, seed=3)
    image = torch.randn((1, 20, 13, 11), generator=torch.Generator().manual_seed(4))
    settings = {"patch_size": (8, 8, 8), "num_classes": 2, "batch_size": 2}
    expected = sliding_window_predict(network, image, mirror_axes=(0, 2), **settings)
    reused = sliding_window_predict(ReusedOutput(network), image, mirror_axes=(0, 2), **settings)
    torch.testing.assert_close(reused, expected, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("mirror", "mirror_axes", "flip_sets"),
    [
        (True, None, _all_subsets((0, 1, 2))),  # no restriction: every axis
        (True, [1], [(), (1,)]),  # the model was trained mirrored along axis 1 only
        (True, [2, 0], [(), (0,), (2,), (0, 2)]),
        (True, [], [()]),  # trained without mirroring: nothing to flip
        (False, None, [()]),  # mirroring not asked for
        (False, [0, 1, 2], [()]),
    ],
)
def test_predict_probabilities_mirrors_only_the_model_s_axes_when_asked(
    mirror: bool, mirror_axes: list[int] | None, flip_sets: FlipSets
) -> None:
    slopes = {0: 0.7, 1: -0.45, 2: 0.3}
    image = np.random.default_rng(5).normal(0, 0.5, (6, 7, 5)).astype(np.float32)
    probabilities = predict_probabilities(
        RampNet(slopes.values()),
        torch.from_numpy(image)[None],
        patch_size=(6, 7, 5),
        num_classes=2,
        mirror=mirror,
        mirror_axes=mirror_axes,
    )
    np.testing.assert_allclose(
        probabilities.numpy(), _ramp_by_hand(image, slopes, flip_sets), atol=2e-6
    )


@pytest.mark.parametrize(
    ("slice_axis", "mirror_axes", "flip_sets"),
    [
        (0, None, [(), (1,), (2,), (1, 2)]),  # all in-plane axes; the slice axis never
        (1, None, [(), (0,), (2,), (0, 2)]),
        (2, None, [(), (0,), (1,), (0, 1)]),
        (1, [1], [()]),  # only the slice axis allowed: nothing to flip in the plane
        (1, [0, 1], [(), (0,)]),
        (0, [2], [(), (2,)]),  # volume axis 2 is the plane's second axis
        (1, [2], [(), (2,)]),
        (2, [1], [(), (1,)]),
        (2, [0, 2], [(), (0,)]),
    ],
)
def test_slice_by_slice_mirroring_flips_the_allowed_in_plane_axes(
    slice_axis: int, mirror_axes: list[int] | None, flip_sets: FlipSets
) -> None:
    spatial = (6, 7, 5)
    in_plane = [axis for axis in range(3) if axis != slice_axis]
    slopes = dict(zip(in_plane, [0.7, -0.45], strict=True))  # the 2D ramp, in the plane
    image = np.random.default_rng(slice_axis).normal(0, 0.5, spatial).astype(np.float32)
    probabilities = predict_probabilities(
        RampNet([0.7, -0.45]),
        torch.from_numpy(image)[None],
        patch_size=[spatial[axis] for axis in in_plane],
        num_classes=2,
        mirror=True,
        mirror_axes=mirror_axes,
        slice_axis=slice_axis,
    )
    expected = _ramp_by_hand(image, slopes, flip_sets)
    np.testing.assert_allclose(probabilities.numpy(), expected, atol=2e-6)
    requested = {axis for axes in flip_sets for axis in axes}
    _assert_distinct_from_other_flip_sets(expected, image, slopes, in_plane, sorted(requested))


@pytest.mark.parametrize("slice_axis", [None, 0, 1, 2])
def test_predict_probabilities_3d_or_slice_by_slice(slice_axis: int | None) -> None:
    image = torch.randn(1, 12, 10, 9)
    patch = (8, 8, 8) if slice_axis is None else (8, 8)
    probabilities = predict_probabilities(
        ThresholdNet(), image, patch_size=patch, num_classes=2, slice_axis=slice_axis
    )
    assert torch.allclose(
        probabilities, torch.softmax(ThresholdNet()(image[None]), 1)[0], atol=1e-5
    )


@pytest.mark.parametrize(
    ("size", "patch", "expected"), [(100, 40, [0, 30, 60]), (80, 40, [0, 30, 40]), (30, 40, [0])]
)
def test_monai_placement_steps_from_the_start(size: int, patch: int, expected: list[int]) -> None:
    assert window_starts(size, patch, overlap=0.25, placement="monai") == expected


# --- predict_scan: the model's mirror axes reach the sliding window ---------------------------


@pytest.fixture(scope="module")
def phantom_plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    return plan_phantoms(tmp_path_factory.mktemp("phantom_plan"))


def _scan_probabilities(
    network: nn.Module,
    plan: Plan,
    configuration: str,
    *,
    mirror: bool,
    mirror_axes: list[int] | None,
) -> np.ndarray:
    """Class probabilities of ``predict_scan`` on phantom 0, on the scan's grid."""
    model = PackagedModel.of_network(
        network,
        plan=plan,
        configuration=configuration,
        label_names=plan.label_names,
        mirror_axes=mirror_axes,
    )
    kept: list[np.ndarray] = []
    scan, _ = small_phantom(0)
    predict_scan(scan, model, options=PredictionOptions(mirror=mirror), probabilities_out=kept)
    return np.stack(kept).astype(np.float32)


@pytest.mark.parametrize(
    ("configuration", "mirror_axes", "plane_flip_sets"),
    [
        ("3d", [0, 2], [(), (0,), (2,), (0, 2)]),
        ("2d", [1, 2], [(), (1,)]),  # slices perpendicular to axis 2: the plane is (0, 1)
    ],
)
def test_predict_scan_mirrors_only_along_the_model_s_mirror_axes(
    phantom_plan: Plan,
    configuration: str,
    mirror_axes: list[int],
    plane_flip_sets: FlipSets,
) -> None:
    assert phantom_plan.configurations["2d"].slice_axis == 2
    network = _fixed_conv(3 if configuration == "3d" else 2, classes=6, seed=6)
    mirrored = _scan_probabilities(
        network, phantom_plan, configuration, mirror=True, mirror_axes=mirror_axes
    )
    expected = _scan_probabilities(
        MirroredInside(network, plane_flip_sets),
        phantom_plan,
        configuration,
        mirror=False,
        mirror_axes=None,
    )
    np.testing.assert_allclose(mirrored, expected, atol=2e-3)  # float16 storage
    every_axis = _scan_probabilities(
        network, phantom_plan, configuration, mirror=True, mirror_axes=None
    )
    assert np.abs(every_axis - mirrored).max() > 0.05
    not_asked = _scan_probabilities(
        network, phantom_plan, configuration, mirror=False, mirror_axes=mirror_axes
    )
    plain = _scan_probabilities(
        network, phantom_plan, configuration, mirror=False, mirror_axes=None
    )
    np.testing.assert_array_equal(not_asked, plain)
    assert np.abs(plain - mirrored).max() > 0.05


def test_a_batch_of_windows_holds_fewer_when_its_output_would_be_too_large(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert windows_per_call(2, 3, (40, 56, 40)) == 2  # 1 MB a window
    assert windows_per_call(8, 16, (96, 96, 96)) == 4  # 57 MB a window: 4 fit in 256 MB
    assert windows_per_call(2, 118, (96, 96, 96)) == 1  # 417 MB a window: one at a time
    sizes: list[int] = []

    class Recording(nn.Module):
        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            sizes.append(batch.shape[0])
            return ThresholdNet()(batch)

    image = torch.randn((1, 16, 16, 16), generator=torch.Generator().manual_seed(0))
    settings = {"patch_size": (8, 8, 8), "num_classes": 2, "batch_size": 4}
    expected = sliding_window_predict(Recording(), image, **settings)
    assert max(sizes) == 4
    sizes.clear()
    # a window's output is 4 KB: with 9 KB allowed, two windows per call
    monkeypatch.setattr(sliding_window, "BATCH_OUTPUT_BYTES", 9 * 1024)
    smaller = sliding_window_predict(Recording(), image, **settings)
    assert max(sizes) == 2
    torch.testing.assert_close(smaller, expected, atol=1e-6, rtol=0)
