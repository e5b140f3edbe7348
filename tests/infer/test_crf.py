"""Dense CRF (``medseg.infer.crf``): against an independent exact fully connected CRF (every
pair of voxels, no window), on synthetic images with sharp edges and "network" probabilities
blurred across them with speckle errors, and wired into ``predict_scan``, the CLI and the
pipeline's predict stage (on phantoms: nothing downloaded)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage, special
from scipy.spatial.distance import cdist

from medseg.errors import CrfInputError, MedsegError
from medseg.infer import crf
from medseg.infer.crf import dense_crf
from medseg.infer.options import CrfSettings, PredictionOptions
from medseg.infer.predictor import PackagedModel, predict_scan
from medseg.preprocess.case import preprocess_case
from medseg.preprocess.plan import Plan
from tests.packaged_model import build_packaged_model
from tests.phantom_plan import plan_phantoms
from tests.phantoms import small_phantom, write_phantom_nifti


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The CRF is many small tensor operations: one thread keeps these tests fast even when
    other processes load the machine (two threads then wait on each other at every op)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _dice(labels: np.ndarray, truth: np.ndarray, structure: int) -> float:
    predicted, reference = labels == structure, truth == structure
    return 2.0 * float((predicted & reference).sum()) / float(predicted.sum() + reference.sum())


def _image(truth: np.ndarray, levels: list[float], rng: np.random.Generator) -> np.ndarray:
    """One channel: a constant intensity per region (sharp edges) plus noise."""
    noisy = np.asarray(levels, np.float32)[truth] + rng.normal(0, 0.2, truth.shape)
    return noisy.astype(np.float32)[np.newaxis]


def _network_probabilities(
    truth: np.ndarray, classes: int, *, blur: float, speckles: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """The one-hot truth blurred across its edges; at ``speckles`` a wrong class gets 0.75."""
    one_hot = np.stack([(truth == k).astype(np.float32) for k in range(classes)])
    soft = np.stack([ndimage.gaussian_filter(channel, blur) for channel in one_hot])
    soft /= soft.sum(0, keepdims=True)
    wrong = (truth + rng.integers(1, classes, truth.shape)) % classes
    speckled = np.full_like(soft, 0.25 / (classes - 1))
    np.put_along_axis(speckled, wrong[np.newaxis], 0.75, axis=0)
    return np.where(speckles[np.newaxis], speckled, soft).astype(np.float32)


def _scene_2d(rng: np.random.Generator) -> np.ndarray:
    """Background, a rectangle (1) and a disc (2) on 64 x 64."""
    truth = np.zeros((64, 64), np.int64)
    truth[8:30, 10:54] = 1
    rows, columns = np.mgrid[:64, :64]
    truth[(rows - 44) ** 2 + (columns - 32) ** 2 < 12**2] = 2
    return truth


def _scene_3d(rng: np.random.Generator) -> np.ndarray:
    """Background, a ball (1) and a box (2) on 40 x 40 x 32."""
    x, y, z = np.mgrid[:40, :40, :32]
    truth = np.zeros((40, 40, 32), np.int64)
    truth[(x - 20) ** 2 + (y - 14) ** 2 + (z - 16) ** 2 < 9**2] = 1
    truth[(abs(x - 20) < 12) & (abs(y - 31) < 5) & (abs(z - 16) < 10)] = 2
    return truth


# --- an independent exact dense CRF: every pair of voxels, no window -------------------------


def _exact_dense_crf(
    probabilities: np.ndarray, image: np.ndarray, spacing: list[float], settings: CrfSettings
) -> np.ndarray:
    """Mean field of the fully connected CRF of Krähenbühl & Koltun (2011) over every pair of
    voxels: an appearance kernel (position in mm and intensity) and a smoothness kernel
    (position), each normalised symmetrically as medseg documents, and the Potts compatibility
    ``μ(l, l') = [l ≠ l']`` applied as a matrix, in float64."""
    classes, spatial = probabilities.shape[0], probabilities.shape[1:]
    positions_mm = np.indices(spatial).reshape(len(spatial), -1).T * np.asarray(spacing, float)
    intensities = image.reshape(image.shape[0], -1).T.astype(np.float64)
    distance2 = cdist(positions_mm, positions_mm, "sqeuclidean")
    contrast2 = cdist(intensities, intensities, "sqeuclidean")
    appearance = np.exp(
        -distance2 / (2 * settings.bilateral_sigma_mm**2)
        - contrast2 / (2 * settings.intensity_sigma**2)
    )
    smoothness = np.exp(-distance2 / (2 * settings.spatial_sigma_mm**2))
    weighted_kernels = []
    for kernel, weight in (
        (appearance, settings.bilateral_weight),
        (smoothness, settings.spatial_weight),
    ):
        np.fill_diagonal(kernel, 0.0)  # j ≠ i: a voxel does not vote for its own label
        norm = kernel.sum(1) ** -0.5
        weighted_kernels.append(weight * norm[:, None] * kernel * norm[None])
    unary = -np.log(np.clip(probabilities.reshape(classes, -1).T.astype(np.float64), 1e-6, None))
    potts = 1.0 - np.eye(classes)
    q = special.softmax(-unary, axis=1)
    for _ in range(settings.iterations):
        pairwise = sum(kernel @ q for kernel in weighted_kernels) @ potts
        q = special.softmax(-unary - pairwise, axis=1)
    return q.T.reshape(probabilities.shape)


def _random_problem(
    spatial: tuple[int, ...], channels: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Unsure random probabilities over 3 classes and a noise image: every neighbour differs."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (3, *spatial))
    probabilities = special.softmax(logits, axis=0).astype(np.float32)
    return probabilities, rng.normal(0, 1, (channels, *spatial)).astype(np.float32)


def _assert_no_pair_is_truncated(
    spatial: tuple[int, ...], spacing: list[float], settings: CrfSettings
) -> None:
    """The documented windows of the kernels in use reach every pair: the smoothness kernel
    3 sigma per axis, the appearance window the ellipsoid of 2 sigma, at most
    ``max_window_radius`` voxels per axis."""
    extent_mm = [(n - 1) * s for n, s in zip(spatial, spacing, strict=True)]
    if settings.spatial_weight > 0:
        assert max(extent_mm) <= 3 * settings.spatial_sigma_mm
    if settings.bilateral_weight > 0:
        assert math.hypot(*extent_mm) <= 2 * settings.bilateral_sigma_mm
        assert max(spatial) - 1 <= settings.max_window_radius


UNTRUNCATED = [
    pytest.param(
        (9, 8),
        1,
        [1.0, 1.0],
        CrfSettings(spatial_sigma_mm=3.0, bilateral_sigma_mm=6.0, max_window_radius=10),
        id="2d",
    ),
    pytest.param(
        (6, 5, 4),
        1,
        [1.0, 1.0, 1.0],
        CrfSettings(
            iterations=3, spatial_sigma_mm=2.0, bilateral_sigma_mm=4.0, max_window_radius=8
        ),
        id="3d",
    ),
    pytest.param(
        (6, 5, 4),
        2,
        [0.8, 1.0, 2.5],
        CrfSettings(
            spatial_sigma_mm=2.5, bilateral_sigma_mm=5.0, intensity_sigma=0.7, max_window_radius=5
        ),
        id="3d-anisotropic-2-channels",
    ),
    pytest.param(
        (7, 6, 3),
        1,
        [0.5, 0.5, 1.0],
        CrfSettings(
            iterations=8,
            spatial_sigma_mm=1.0,
            spatial_weight=3.0,
            bilateral_sigma_mm=2.5,
            bilateral_weight=0.5,
            intensity_sigma=0.3,
            max_window_radius=6,
        ),
        id="3d-strong-smoothness",
    ),
    pytest.param(
        (8, 7),
        1,
        [1.0, 1.2],
        CrfSettings(spatial_weight=0.0, bilateral_sigma_mm=6.0, max_window_radius=7),
        id="2d-appearance-only",
    ),
    pytest.param(
        (8, 7),
        1,
        [1.0, 1.2],
        CrfSettings(bilateral_weight=0.0, spatial_sigma_mm=3.0),
        id="2d-smoothness-only",
    ),
]


@pytest.mark.parametrize(("spatial", "channels", "spacing", "settings"), UNTRUNCATED)
def test_dense_crf_with_windows_that_reach_every_pair_equals_the_exact_dense_crf(
    spatial: tuple[int, ...], channels: int, spacing: list[float], settings: CrfSettings
) -> None:
    _assert_no_pair_is_truncated(spatial, spacing, settings)
    probabilities, image = _random_problem(spatial, channels, seed=len(spatial) + channels)
    refined = dense_crf(probabilities, image, spacing_mm=spacing, settings=settings)
    expected = _exact_dense_crf(probabilities, image, spacing, settings)
    np.testing.assert_allclose(refined, expected, atol=2e-6, rtol=0)  # float32 against float64
    assert np.abs(expected - probabilities).max() > 0.02  # 10^4 times the tolerance


def _difference(refined: np.ndarray, exact: np.ndarray) -> tuple[float, float, float]:
    """Largest and mean absolute difference of the probabilities, share of labels changed."""
    difference = np.abs(refined - exact)
    labels_changed = float((refined.argmax(0) != exact.argmax(0)).mean())
    return float(difference.max()), float(difference.mean()), labels_changed


@pytest.mark.parametrize("spatial", [(16, 14), (12, 11, 10)], ids=["2d", "3d"])
def test_default_window_truncation_is_bounded_and_vanishes_as_the_window_grows(
    spatial: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    # By design the appearance kernel stops at the ellipsoid of 2 sigma (4 mm by default:
    # weights of exp(-2) = 0.14 and less are left out) and the smoothness kernel at 3 sigma.
    # On 1 mm voxels and noise images (every neighbour different: the worst case) the defaults
    # stay close to the exact CRF, and a wider window brings them closer.
    probabilities, image = _random_problem(spatial, 1, seed=7)
    spacing = [1.0] * len(spatial)
    exact = _exact_dense_crf(probabilities, image, spacing, CrfSettings())
    largest, mean, labels_changed = _difference(
        dense_crf(probabilities, image, spacing_mm=spacing), exact
    )
    assert largest < 0.1 and mean < 0.01 and labels_changed < 0.02
    # (appearance reach in sigmas, smoothness reach in sigmas, radius cap in voxels)
    windows = [(2.0, 3.0, radius) for radius in (1, 2, 3, 4)]  # up to the default window
    windows += [(reach, reach + 1, 10) for reach in (3.0, 4.0, 5.0)]  # wider than medseg's
    errors = []
    for appearance_reach, smoothness_reach, radius in windows:
        monkeypatch.setattr(crf, "BILATERAL_TRUNCATE", appearance_reach)
        monkeypatch.setattr(crf, "SPATIAL_TRUNCATE", smoothness_reach)
        settings = CrfSettings(max_window_radius=radius)
        refined = dense_crf(probabilities, image, spacing_mm=spacing, settings=settings)
        errors.append(_difference(refined, exact))
    assert errors[3] == (largest, mean, labels_changed)  # the default window
    mean_errors = [error[1] for error in errors]
    assert all(a > b for a, b in itertools.pairwise(mean_errors)), mean_errors
    assert errors[0][2] > 0.05 and errors[5][2] == 0.0  # labels: radius 1 changes, 4 sigma none
    assert errors[-1][0] < 1e-5


# --- behaviour on synthetic scenes -----------------------------------------------------------


@pytest.mark.parametrize(
    ("scene", "spacing", "min_gain"),
    [(_scene_2d, (1.0, 1.0), 0.03), (_scene_3d, (1.0, 1.0, 1.0), 0.08)],
    ids=["2d", "3d"],
)
def test_crf_raises_dice_and_removes_speckles(scene, spacing: tuple, min_gain: float) -> None:
    rng = np.random.default_rng(0)
    truth = scene(rng)
    image = _image(truth, [0.0, 1.5, -1.5], rng)
    speckles = rng.random(truth.shape) < 0.03
    probabilities = _network_probabilities(truth, 3, blur=2.0, speckles=speckles, rng=rng)
    before = probabilities.argmax(0)
    after = dense_crf(probabilities, image, spacing_mm=spacing).argmax(0)
    for structure in (1, 2):
        assert _dice(after, truth, structure) >= _dice(before, truth, structure) + min_gain
    boundary = ndimage.morphological_gradient(truth, size=(3,) * truth.ndim) > 0
    far = speckles & ~ndimage.binary_dilation(boundary, iterations=2)
    assert (before[far] != truth[far]).all()  # every speckle was an error
    assert (after[far] == truth[far]).mean() > 0.98
    assert (after[speckles] == truth[speckles]).mean() > 0.9


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.7, 1.4)])
def test_zero_iterations_is_the_identity(spacing: tuple) -> None:
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet([1, 1, 1], (12, 10)).transpose(2, 0, 1).astype(np.float32)
    image = rng.normal(0, 1, (1, 12, 10)).astype(np.float32)
    refined = dense_crf(
        probabilities, image, spacing_mm=spacing, settings=CrfSettings(iterations=0)
    )
    np.testing.assert_array_equal(refined, probabilities)


@pytest.mark.parametrize(
    ("kind", "dtype"),
    [
        ("numpy", np.float32),
        ("numpy", np.float16),
        ("tensor", torch.float32),
        ("tensor", torch.float64),
    ],
)
def test_output_keeps_shape_and_kind_is_float32_and_sums_to_one(kind: str, dtype) -> None:
    rng = np.random.default_rng(2)
    probabilities = rng.dirichlet([1, 1, 1, 1], (9, 8, 7)).transpose(3, 0, 1, 2)
    image = rng.normal(0, 1, (2, 9, 8, 7)).astype(np.float32)
    if kind == "tensor":
        probabilities = torch.from_numpy(probabilities).to(dtype)
        image = torch.from_numpy(image)
    else:
        probabilities = probabilities.astype(dtype)
    refined = dense_crf(probabilities, image, spacing_mm=(1.0, 1.0, 2.0))
    assert isinstance(refined, np.ndarray if kind == "numpy" else torch.Tensor)
    assert tuple(refined.shape) == (4, 9, 8, 7)
    assert refined.dtype == (np.float32 if kind == "numpy" else torch.float32)
    np.testing.assert_allclose(np.asarray(refined.sum(0)), 1.0, atol=1e-5)
    # the same values as the float32 computation on the (possibly rounded) input
    as_float32 = np.asarray(probabilities).astype(np.float32)
    expected = dense_crf(as_float32, np.asarray(image), spacing_mm=(1.0, 1.0, 2.0))
    np.testing.assert_allclose(np.asarray(refined), expected, atol=1e-6, rtol=0)
    assert np.abs(expected - as_float32).max() > 0.1


def _physical_ball(spacing_z: float, rng: np.random.Generator):
    """A ball of radius 9 mm whose intensity edge is sharp, in a 40 x 40 x 48 mm box sampled
    at (1, 1, spacing_z) mm; the network's sphere is 2 mm too large and soft."""
    z_centres = (np.arange(round(48 / spacing_z)) + 0.5) * spacing_z
    x, y, z = np.meshgrid(np.arange(40) + 0.5, np.arange(40) + 0.5, z_centres, indexing="ij")
    radius = np.sqrt((x - 20) ** 2 + (y - 20) ** 2 + (z - 24) ** 2)
    truth = (radius < 9).astype(np.int64)
    image = (np.where(truth == 1, 1.0, -1.0) + rng.normal(0, 0.1, truth.shape)).astype(np.float32)
    inside = 1 / (1 + np.exp((radius - 11) / 2.5))
    probabilities = np.stack([1 - inside, inside]).astype(np.float32)
    return truth, image[np.newaxis], probabilities


def test_anisotropic_spacing_gives_the_result_of_the_isotropic_problem() -> None:
    rng = np.random.default_rng(3)
    truth_fine, image_fine, probabilities_fine = _physical_ball(1.0, rng)
    truth_coarse, image_coarse, probabilities_coarse = _physical_ball(3.0, rng)
    fine = dense_crf(probabilities_fine, image_fine, spacing_mm=(1.0, 1.0, 1.0))
    coarse = dense_crf(probabilities_coarse, image_coarse, spacing_mm=(1.0, 1.0, 3.0))
    fine_on_coarse = fine.argmax(0)[:, :, 1::3]  # the fine slices at the coarse slice centres
    assert (truth_fine[:, :, 1::3] == truth_coarse).all()
    assert _dice(coarse.argmax(0), fine_on_coarse, 1) > 0.98
    assert (
        _dice(coarse.argmax(0), truth_coarse, 1)
        > _dice(probabilities_coarse.argmax(0), truth_coarse, 1) + 0.05
    )
    # treating the thick slices as 1 mm ones is a different problem with another answer
    wrong = dense_crf(probabilities_coarse, image_coarse, spacing_mm=(1.0, 1.0, 1.0))
    assert _dice(wrong.argmax(0), fine_on_coarse, 1) < _dice(coarse.argmax(0), fine_on_coarse, 1)


@pytest.mark.parametrize(
    ("settings", "expected_boundary"),
    [
        (CrfSettings(), 24),  # bilateral (with smoothness): onto the intensity edge
        (CrfSettings(bilateral_weight=0.0), 26),  # smoothness only: stays where it was
        (CrfSettings(bilateral_weight=0.0, spatial_weight=3.0), 26),
    ],
    ids=["bilateral", "smoothness", "strong-smoothness"],
)
def test_intensity_edge_attracts_the_boundary(
    settings: CrfSettings, expected_boundary: int
) -> None:
    rng = np.random.default_rng(4)
    columns = np.mgrid[:48, :48][1]
    image = np.where(columns >= 24, 1.0, -1.0) + rng.normal(0, 0.2, columns.shape)
    # the network puts the boundary 2 voxels right of the edge, unsure in between
    inside = np.where(columns >= 26, 0.95, np.where(columns >= 24, 0.4, 0.05))
    probabilities = np.stack([1 - inside, inside]).astype(np.float32)
    refined = dense_crf(
        probabilities, image[np.newaxis].astype(np.float32), spacing_mm=(1, 1), settings=settings
    )
    first_inside = np.argmax(refined.argmax(0) == 1, axis=1)  # per row
    assert np.median(first_inside) == expected_boundary
    assert (np.abs(first_inside - expected_boundary) <= 1).mean() > 0.9


def test_per_slice_runs_the_exact_2d_crf_of_each_slice_without_mixing() -> None:
    # slices perpendicular to axis 1 (not the coarsest axis: only the argument chooses it),
    # in-plane spacing (1.0, 1.5) mm; windows wide enough for the exact CRF of each slice
    probabilities, image = _random_problem((7, 5, 6), 1, seed=5)
    settings = CrfSettings(
        per_slice=True, spatial_sigma_mm=2.5, bilateral_sigma_mm=5.0, max_window_radius=10
    )
    _assert_no_pair_is_truncated((7, 6), [1.0, 1.5], settings)
    spacing = (1.0, 1.2, 1.5)
    refined = dense_crf(probabilities, image, spacing_mm=spacing, settings=settings, slice_axis=1)
    for index in range(5):
        expected = _exact_dense_crf(
            probabilities[:, :, index], image[:, :, index], [1.0, 1.5], settings
        )
        np.testing.assert_allclose(refined[:, :, index], expected, atol=2e-6, rtol=0)
    volume = dense_crf(
        probabilities,
        image,
        spacing_mm=spacing,
        settings=settings.model_copy(update={"per_slice": False}),
    )
    assert np.abs(volume - refined).max() > 0.01  # the 3D CRF does mix slices


def test_per_slice_defaults_to_the_coarsest_axis() -> None:
    rng = np.random.default_rng(6)
    probabilities = rng.dirichlet([1, 1], (8, 5, 7)).transpose(3, 0, 1, 2).astype(np.float32)
    image = rng.normal(0, 1, (1, 8, 5, 7)).astype(np.float32)
    settings = CrfSettings(per_slice=True)
    default = dense_crf(probabilities, image, spacing_mm=(1, 3, 1), settings=settings)
    along_1 = dense_crf(probabilities, image, spacing_mm=(1, 3, 1), settings=settings, slice_axis=1)
    along_2 = dense_crf(probabilities, image, spacing_mm=(1, 3, 1), settings=settings, slice_axis=2)
    np.testing.assert_array_equal(default, along_1)
    assert np.abs(default - along_2).max() > 0.01


def _valid_inputs() -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.full((2, 6, 5, 4), 0.5, np.float32)
    return probabilities, np.zeros((1, 6, 5, 4), np.float32)


def _with(array: np.ndarray, index: tuple, value: float) -> np.ndarray:
    changed = array.copy()
    changed[index] = value
    return changed


@pytest.mark.parametrize(
    ("probabilities", "image", "spacing", "message"),
    [
        (_valid_inputs()[0], np.zeros((1, 6, 5, 3), np.float32), (1, 1, 1), "does not match"),
        (_valid_inputs()[0], np.zeros((6, 5, 4), np.float32), (1, 1, 1), "does not match"),
        (*_valid_inputs(), (1, 1), "2 values for 3 spatial axes"),
        (*_valid_inputs(), (1, 0, 1), "positive and finite"),
        (*_valid_inputs(), (1, float("nan"), 1), "positive and finite"),
        (np.full((2, 6), 0.5, np.float32), np.zeros((1, 6), np.float32), (1,), "(K, X, Y)"),
        (_with(_valid_inputs()[0], (0, 1, 1, 1), np.nan), _valid_inputs()[1], (1, 1, 1), "NaN"),
        (_valid_inputs()[0], _with(_valid_inputs()[1], (0, 0, 0, 0), np.inf), (1, 1, 1), "image"),
        (np.full((2, 6, 5, 4), 2.0, np.float32), _valid_inputs()[1], (1, 1, 1), "sum to 1"),
        (_with(_valid_inputs()[0], (0, 0, 0, 0), -0.5), _valid_inputs()[1], (1, 1, 1), "negative"),
    ],
)
def test_invalid_inputs_raise_a_clear_error(probabilities, image, spacing, message: str) -> None:
    with pytest.raises(CrfInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        dense_crf(probabilities, image, spacing_mm=spacing)
    assert issubclass(CrfInputError, MedsegError) and issubclass(CrfInputError, ValueError)


def test_settings_reject_unknown_and_invalid_values() -> None:
    with pytest.raises(ValueError, match="extra"):
        CrfSettings(iteration=3)
    with pytest.raises(ValueError, match="greater than 0"):
        CrfSettings(intensity_sigma=0)


# --- wiring: predict_scan, CLI, pipeline stage -----------------------------------------------


@pytest.fixture(scope="module")
def phantom_plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    return plan_phantoms(tmp_path_factory.mktemp("phantom_plan"))


def _conv_model(plan: Plan, configuration: str) -> PackagedModel:
    """A one-layer network with fixed random weights for the plan's six classes."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d if configuration == "3d" else torch.nn.Conv2d
    return PackagedModel.of_network(
        conv(1, len(plan.label_names), 3, padding=1).eval(),
        plan=plan,
        configuration=configuration,
        label_names=plan.label_names,
    )


@dataclass
class CrfCall:
    probabilities: np.ndarray
    image: np.ndarray
    options: dict
    refined: np.ndarray


def _record_crf_calls(monkeypatch: pytest.MonkeyPatch) -> list[CrfCall]:
    """Replace the predictor's ``dense_crf`` by itself plus a record of each call."""
    import medseg.infer.predictor as predictor

    calls: list[CrfCall] = []

    def recording_crf(probabilities: torch.Tensor, image: torch.Tensor, **options):
        refined = dense_crf(probabilities, image, **options)
        calls.append(
            CrfCall(
                probabilities.numpy().copy(), image.numpy().copy(), options, refined.numpy().copy()
            )
        )
        return refined

    monkeypatch.setattr(predictor, "dense_crf", recording_crf)
    return calls


def test_predict_scan_refines_the_network_probabilities_and_labels_the_refined_ones(
    phantom_plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _conv_model(phantom_plan, "3d")
    scan, _ = small_phantom(0)
    calls = _record_crf_calls(monkeypatch)
    kept_crf: list[np.ndarray] = []
    kept_plain: list[np.ndarray] = []
    options = PredictionOptions(crf=CrfSettings())
    labels = predict_scan(scan, model, options=options, probabilities_out=kept_crf)
    plain = predict_scan(scan, model, options=PredictionOptions(), probabilities_out=kept_plain)
    assert len(calls) == 1
    call = calls[0]
    # the phantom is on the plan's grid (3 x 3 x 4 mm, nothing cropped): preprocessing only
    # normalises, so the CRF's grid is the scan's
    assert call.options == {
        "spacing_mm": [3.0, 3.0, 4.0],
        "settings": CrfSettings(),
        "slice_axis": None,
    }
    normalised = preprocess_case(scan, None, phantom_plan, case_id="scan").image
    np.testing.assert_array_equal(call.image, normalised)
    np.testing.assert_allclose(call.probabilities, np.stack(kept_plain), atol=1e-3)  # float16 kept
    np.testing.assert_allclose(np.stack(kept_crf), call.refined, atol=1e-3)
    np.testing.assert_array_equal(labels.array, call.refined.argmax(0))
    assert labels.same_grid(scan)
    assert (labels.array != plain.array).mean() > 0.001  # the CRF changed labels


def test_predict_scan_runs_the_crf_on_the_plan_grid_with_the_plan_spacing(
    phantom_plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan, _ = small_phantom(0, spacing_mm=(2.5, 3.5, 5.0))  # resampled to 3 x 3 x 4 mm
    calls = _record_crf_calls(monkeypatch)
    options = PredictionOptions(crf=CrfSettings(iterations=1))
    labels = predict_scan(scan, _conv_model(phantom_plan, "3d"), options=options)
    assert calls[0].options["spacing_mm"] == phantom_plan.target_spacing == [3.0, 3.0, 4.0]
    preprocessed = preprocess_case(scan, None, phantom_plan, case_id="scan")
    np.testing.assert_array_equal(calls[0].image, preprocessed.image)
    assert calls[0].image.shape[1:] != scan.shape and labels.same_grid(scan)


def test_predict_scan_of_a_2d_configuration_runs_the_crf_per_slice_on_request(
    phantom_plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    slice_axis = phantom_plan.configurations["2d"].slice_axis
    assert slice_axis == 2  # the coarsest axis of the 3 x 3 x 4 mm phantoms
    calls = _record_crf_calls(monkeypatch)
    settings = CrfSettings(per_slice=True, iterations=2)
    scan, _ = small_phantom(0)
    predict_scan(scan, _conv_model(phantom_plan, "2d"), options=PredictionOptions(crf=settings))
    call = calls[0]
    assert call.options["slice_axis"] == slice_axis and call.options["settings"] == settings
    for index in (0, 16, 32):  # a 2D CRF on each slice, with the in-plane spacing
        alone = dense_crf(
            call.probabilities[..., index],
            call.image[..., index],
            spacing_mm=(3.0, 3.0),
            settings=settings,
        )
        np.testing.assert_allclose(call.refined[..., index], alone, atol=1e-6)


@pytest.fixture(scope="module")
def phantom_model_uri(
    phantom_plan: Plan, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    # the logged network has three classes: the plan names three labels to match
    three_labels = phantom_plan.model_copy(
        update={"label_names": {0: "background", 1: "liver", 2: "spleen"}}
    )
    return build_packaged_model(three_labels, tmp_path_factory.mktemp("mlflow"))


@pytest.mark.parametrize("command", ["predict", "batch"])
def test_cli_accepts_crf(
    command: str,
    tmp_path: Path,
    phantom_model_uri: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    import medseg.batch.runner
    import medseg.infer.stage
    from medseg.cli import app

    model_uri, tracking = phantom_model_uri
    seen: list[PredictionOptions] = []

    def refuse(*args, options: PredictionOptions | None = None, settings=None, **kwargs):
        seen.append(options or settings.options)  # predict_path, or run_batch's BatchSettings
        raise MedsegError("stopped by the test after parsing")

    if command == "predict":  # the real model loads; the scans are not predicted
        monkeypatch.setattr(medseg.infer.stage, "predict_path", refuse)
    else:
        monkeypatch.setattr(medseg.batch.runner, "run_batch", refuse)
    scans = tmp_path / "scans"
    write_phantom_nifti(scans / "phantom.nii.gz")
    arguments = [command, str(scans), "--model", model_uri, "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*arguments, "--crf", "--tracking-uri", tracking])
    assert len(seen) == 1 and seen[0].crf == CrfSettings(), result.output
    plain = CliRunner().invoke(app, [*arguments, "--tracking-uri", tracking])
    assert len(seen) == 2 and seen[1].crf is None, plain.output
    assert plain.exit_code == 2 and "stopped by the test" in plain.output


def test_pipeline_predict_stage_accepts_crf_settings() -> None:
    from medseg.pipeline.stages.apply import PredictStageOptions

    options = PredictStageOptions.model_validate({"input": "scans", "crf": {"iterations": 3}})
    assert PredictionOptions(crf=options.crf).crf == CrfSettings(iterations=3)
    assert PredictStageOptions.model_validate({"input": "scans", "crf": True}).crf == (
        CrfSettings()
    )
    assert PredictStageOptions.model_validate({"input": "scans"}).crf is None
    with pytest.raises(ValueError, match=r"crf\.iteration"):
        PredictStageOptions.model_validate({"input": "scans", "crf": {"iteration": 3}})


@pytest.mark.parametrize(
    ("spacing", "pairs"),
    [((1.0, 1.0, 1.0), 128), ((1.0, 1.0, 3.0), 45), ((0.5, 0.5, 0.5), 364), ((1.0, 1.0), 24)],
)
def test_bilateral_window_is_bounded_by_the_radius_cap(spacing: tuple, pairs: int) -> None:
    # the bilateral kernel costs one pass per pair of opposite offsets
    from medseg.infer.crf import _window_offsets

    offsets = [offset for offset, _ in _window_offsets(list(spacing), 2.0, 4)]
    assert len(offsets) == pairs <= (9 ** len(spacing) - 1) // 2
    assert all(max(abs(o) for o in offset) <= 4 for offset in offsets)
    assert not {tuple(-o for o in offset) for offset in offsets} & set(offsets)
