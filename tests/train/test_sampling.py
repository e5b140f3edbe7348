"""Tests of patch/slice sampling with foreground oversampling (medseg.train.sampling)."""

from __future__ import annotations

import itertools
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from medseg.errors import GeometryMismatchError, InvalidSampleSourceError, SamplingConfigError
from medseg.train.sampling import (
    IMAGE_PAD_VALUE,
    LABEL_PAD_VALUE,
    WEIGHTS_PAD_VALUE,
    Batch,
    BatchSampler,
    PatchPlan,
    SampleSource,
    choose_patch,
    extract_patch,
    forced_foreground_count,
)

Box = tuple[slice, slice, slice]

# A 64^3 volume with a 4^3 blob near a corner: a random 16^3 patch rarely touches it.
RARE_SHAPE = (64, 64, 64)
RARE_BLOB: Box = (slice(52, 56), slice(6, 10), slice(50, 54))


def coordinate_image(shape: tuple[int, int, int], channels: int = 1) -> np.ndarray:
    """Image whose value encodes its voxel: ``x * 10000 + y * 100 + z + channel * 1e6``."""
    x, y, z = np.indices(shape)
    code = (x * 10000 + y * 100 + z).astype(np.float32)
    return np.stack([code + 1_000_000 * c for c in range(channels)]).astype(np.float32)


def make_source(
    case_id: str = "case",
    *,
    shape: tuple[int, int, int] = (24, 20, 16),
    blobs: dict[int, Box] | None = None,
    channels: int = 1,
    with_weights: bool = False,
) -> SampleSource:
    """A synthetic case; ``blobs`` maps label values to boxes (default: one corner blob)."""
    if blobs is None:
        blobs = {1: (slice(20, 23), slice(1, 3), slice(13, 15))}
    label = np.zeros(shape, dtype=np.uint8)
    for value, box in blobs.items():
        label[box] = value
    locations = {value: np.argwhere(label == value) for value in blobs}
    weights = None
    if with_weights:
        weights = (2.0 + np.indices(shape).sum(axis=0) % 5).astype(np.float32)
    return SampleSource(
        case_id=case_id,
        image=coordinate_image(shape, channels),
        label=label,
        class_locations=locations,
        weights=weights,
    )


def random_hit_probability(shape: tuple[int, ...], window: tuple[int, ...], blob: Box) -> float:
    """Chance that a uniformly placed window overlaps ``blob`` (independent per axis)."""
    probability = 1.0
    for dim, size, box in zip(shape, window, blob, strict=True):
        starts = np.arange(min(0, dim - size), max(0, dim - size) + 1)
        hits = (starts <= box.stop - 1) & (starts + size - 1 >= box.start)
        probability *= hits.mean()
    return probability


def assert_batches_equal(first: Batch, second: Batch) -> None:
    np.testing.assert_array_equal(first.image, second.image)
    np.testing.assert_array_equal(first.label, second.label)
    assert first.case_ids == second.case_ids
    np.testing.assert_array_equal(first.foreground_forced, second.foreground_forced)
    assert first.plans == second.plans


# --- the forced-foreground rule -------------------------------------------------------------

COUNT_CASES = [
    # (batch_size, fraction, forced)
    (1, 1 / 3, 1),
    (2, 1 / 3, 1),
    (3, 1 / 3, 1),
    (4, 1 / 3, 2),
    (12, 1 / 3, 4),
    (6, 0.0, 0),
    (5, 1.0, 5),
    (10, 0.7, 7),  # 10 * 0.7 == 7.000000000000001 must not become 8
    (3, 0.1, 1),
]


@pytest.mark.parametrize(("batch_size", "fraction", "expected"), COUNT_CASES)
def test_forced_foreground_count(batch_size: int, fraction: float, expected: int) -> None:
    assert forced_foreground_count(batch_size, fraction) == expected
    assert expected >= batch_size * fraction - 1e-9


@pytest.mark.parametrize(("batch_size", "fraction", "expected"), COUNT_CASES)
def test_forced_samples_are_the_last_of_each_batch(
    batch_size: int, fraction: float, expected: int
) -> None:
    sampler = BatchSampler(
        [make_source()],
        patch_size=(8, 8, 8),
        batch_size=batch_size,
        foreground_fraction=fraction,
        seed=0,
    )
    flags = [False] * (batch_size - expected) + [True] * expected
    for batch in itertools.islice(sampler, 3):
        assert batch.foreground_forced.tolist() == flags


# --- reproducibility ------------------------------------------------------------------------


def two_case_sampler(seed: int, **options: object) -> BatchSampler:
    sources = [make_source("a", with_weights=True), make_source("b", with_weights=True)]
    return BatchSampler(sources, patch_size=(8, 8, 8), batch_size=4, seed=seed, **options)


def test_same_seed_gives_identical_batches() -> None:
    first, second = two_case_sampler(7), two_case_sampler(7)
    for _ in range(5):
        one, two = first.next_batch(), second.next_batch()
        assert_batches_equal(one, two)
        np.testing.assert_array_equal(one.weights, two.weights)


def test_iteration_continues_the_next_batch_stream() -> None:
    iterated = list(itertools.islice(two_case_sampler(3), 4))
    stepped = two_case_sampler(3)
    for batch in iterated:
        assert_batches_equal(batch, stepped.next_batch())


def test_different_seeds_give_different_batches() -> None:
    first, second = two_case_sampler(1), two_case_sampler(2)
    plans_one = [first.plan_batch() for _ in range(5)]
    plans_two = [second.plan_batch() for _ in range(5)]
    assert plans_one != plans_two


def test_extraction_is_deterministic() -> None:
    source = make_source(with_weights=True)
    plan = choose_patch(
        source, patch_size=(8, 8, 8), force_foreground=True, rng=np.random.default_rng(0)
    )
    one, two = extract_patch(source, plan), extract_patch(source, plan)
    np.testing.assert_array_equal(one.image, two.image)
    np.testing.assert_array_equal(one.label, two.label)
    np.testing.assert_array_equal(one.weights, two.weights)


# --- foreground guarantee and rates ---------------------------------------------------------

CORNER_BLOB = {1: np.s_[21:24, 0:2, 1:2]}
FOREGROUND_CASES = [
    # (id, shape, blobs, patch_size, slice_axis)
    ("3d-corner-blob", (24, 20, 16), CORNER_BLOB, (8, 8, 8), None),
    (
        "3d-single-voxels",
        (24, 20, 16),
        {1: np.s_[0:1, 0:1, 0:1], 2: np.s_[23:24, 19:20, 15:16]},
        (6, 6, 6),
        None,
    ),
    ("3d-patch-larger-than-volume", (10, 6, 12), {1: np.s_[7:10, 0:2, 1:2]}, (16, 8, 8), None),
    ("2d-axis0", (24, 20, 16), CORNER_BLOB, (8, 8), 0),
    ("2d-axis1", (24, 20, 16), CORNER_BLOB, (8, 8), 1),
    ("2d-axis2", (24, 20, 16), {3: np.s_[22:24, 0:1, 7:8]}, (8, 8), 2),
]


@pytest.mark.parametrize(
    ("shape", "blobs", "patch_size", "slice_axis"),
    [case[1:] for case in FOREGROUND_CASES],
    ids=[case[0] for case in FOREGROUND_CASES],
)
def test_forced_samples_always_contain_foreground(
    shape: tuple[int, int, int],
    blobs: dict[int, Box],
    patch_size: tuple[int, ...],
    slice_axis: int | None,
) -> None:
    sampler = BatchSampler(
        [make_source("a", shape=shape, blobs=blobs), make_source("b", shape=shape, blobs=blobs)],
        patch_size=patch_size,
        batch_size=6,
        foreground_fraction=0.5,
        slice_axis=slice_axis,
        seed=11,
    )
    for _ in range(50):
        batch = sampler.next_batch()
        for label, plan, forced in zip(
            batch.label, batch.plans, batch.foreground_forced, strict=True
        ):
            if forced:
                assert np.count_nonzero(label) > 0
                assert np.any(label == plan.foreground_class)
        assert not batch.foreground_fallback.any()


def test_foreground_class_is_uniform_over_present_classes() -> None:
    source = make_source(
        blobs={1: np.s_[0:20, 0:20, 0:10], 2: np.s_[22:23, 18:19, 15:16], 3: np.s_[0:0, 0:0, 0:0]}
    )
    assert source.foreground_classes == (1, 2)  # class 3 is absent from the case
    rng = np.random.default_rng(5)
    classes = [
        choose_patch(source, patch_size=(4, 4, 4), force_foreground=True, rng=rng).foreground_class
        for _ in range(2000)
    ]
    assert set(classes) == {1, 2}
    # 2000 fair coin flips: 4 standard deviations is about 0.045.
    assert abs(classes.count(2) / len(classes) - 0.5) < 0.045


def test_foreground_voxel_takes_random_positions_inside_the_patch() -> None:
    source = make_source(shape=(20, 20, 20), blobs={1: np.s_[10:11, 10:11, 1:2]})
    rng = np.random.default_rng(2)
    offsets = set()
    for _ in range(500):
        plan = choose_patch(source, patch_size=(5, 5, 5), force_foreground=True, rng=rng)
        offset = np.subtract((10, 10, 1), plan.start)
        assert np.all((offset >= 0) & (offset < 5))
        offsets.add(tuple(offset.tolist()))
    # Free axes see every offset; near the z = 0 border starts below 0 are clamped to 0, which
    # leaves the voxel (z = 1) at offset 1, or at offset 0 when the start is 1.
    assert {o[0] for o in offsets} == set(range(5))
    assert {o[1] for o in offsets} == set(range(5))
    assert {o[2] for o in offsets} == {0, 1}


RATE_CASES = [
    # (fraction, batch_size, patch_size, slice_axis)
    (1 / 3, 6, (16, 16, 16), None),
    (1 / 3, 2, (16, 16, 16), None),  # ceil rule: 1 of 2 forced
    (0.5, 4, (16, 16, 16), None),
    (0.0, 6, (16, 16, 16), None),
    (1 / 3, 6, (16, 16), 2),
    (0.0, 6, (16, 16), 2),
]


@pytest.mark.parametrize(("fraction", "batch_size", "patch_size", "slice_axis"), RATE_CASES)
def test_measured_foreground_rate(
    fraction: float, batch_size: int, patch_size: tuple[int, ...], slice_axis: int | None
) -> None:
    source = make_source(shape=RARE_SHAPE, blobs={1: RARE_BLOB})
    sampler = BatchSampler(
        [source],
        patch_size=patch_size,
        batch_size=batch_size,
        foreground_fraction=fraction,
        slice_axis=slice_axis,
        seed=123,
    )
    window = (
        patch_size
        if slice_axis is None
        else (*patch_size[:slice_axis], 1, *patch_size[slice_axis:])
    )
    hit_probability = random_hit_probability(RARE_SHAPE, window, RARE_BLOB)
    assert hit_probability < 0.02  # random patches rarely see the blob
    n_batches = 3000 // batch_size
    hits = 0
    for _ in range(n_batches):
        labels = sampler.next_batch().label
        hits += int(np.count_nonzero(labels.reshape(batch_size, -1).any(axis=1)))
    n_samples = n_batches * batch_size
    rate = hits / n_samples
    forced_share = forced_foreground_count(batch_size, fraction) / batch_size
    expected = forced_share + (1 - forced_share) * hit_probability
    # Only the random draws vary: binomial with n_random trials; allow 4 standard deviations.
    n_random = n_samples * (1 - forced_share)
    tolerance = 4 * math.sqrt(n_random * hit_probability * (1 - hit_probability)) / n_samples
    assert rate >= fraction
    assert abs(rate - expected) <= tolerance


# --- 2D slices ------------------------------------------------------------------------------


@pytest.mark.parametrize(("slice_axis", "patch_size"), [(0, (6, 5)), (1, (7, 5)), (2, (7, 6))])
def test_slices_come_from_the_slice_axis(slice_axis: int, patch_size: tuple[int, int]) -> None:
    shape = (12, 10, 8)
    source = make_source(shape=shape, blobs={1: np.s_[10:12, 0:2, 6:8]}, channels=2)
    sampler = BatchSampler(
        [source], patch_size=patch_size, batch_size=5, slice_axis=slice_axis, seed=4
    )
    in_plane = [axis for axis in range(3) if axis != slice_axis]
    for _ in range(20):
        batch = sampler.next_batch()
        assert batch.image.shape == (5, 2, *patch_size)
        assert batch.label.shape == (5, *patch_size)
        for image, plan in zip(batch.image, batch.plans, strict=True):
            assert image.dtype == np.float32
            code = image[0].astype(np.int64)
            coordinates = (code // 10000, code // 100 % 100, code % 100)
            # Constant along the slice axis, growing by one along each in-plane patch axis.
            assert np.all(coordinates[slice_axis] == plan.slice_index)
            first, second = (coordinates[axis] for axis in in_plane)
            np.testing.assert_array_equal(np.diff(first, axis=0), 1)
            np.testing.assert_array_equal(np.diff(second, axis=1), 1)
            assert first[0, 0] == plan.start[in_plane[0]]
            assert second[0, 0] == plan.start[in_plane[1]]
            np.testing.assert_array_equal(image[1] - image[0], 1_000_000)


def test_random_slices_cover_every_slice_index() -> None:
    source = make_source(shape=(12, 10, 8))
    rng = np.random.default_rng(0)
    indices = {
        choose_patch(
            source, patch_size=(4, 4), slice_axis=1, force_foreground=False, rng=rng
        ).slice_index
        for _ in range(500)
    }
    assert indices == set(range(10))


# --- placement range and padding ------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "patch_size", "low", "high"),
    [
        ((20, 20, 20), (5, 5, 5), (0, 0, 0), (15, 15, 15)),
        ((6, 5, 20), (8, 5, 4), (-2, 0, 0), (0, 0, 16)),
    ],
)
def test_random_starts_span_all_valid_positions(
    shape: tuple[int, int, int],
    patch_size: tuple[int, int, int],
    low: tuple[int, ...],
    high: tuple[int, ...],
) -> None:
    source = make_source(shape=shape, blobs={1: np.s_[0:1, 0:1, 0:1]})
    rng = np.random.default_rng(9)
    starts = np.array(
        [
            choose_patch(source, patch_size=patch_size, force_foreground=False, rng=rng).start
            for _ in range(3000)
        ]
    )
    assert tuple(starts.min(axis=0)) == low
    assert tuple(starts.max(axis=0)) == high


PAD_CASES = [
    # (shape, start, window): windows partly or wholly outside the volume
    ((6, 5, 4), (-1, -2, -3), (8, 8, 8)),
    ((6, 5, 4), (0, 0, 0), (8, 8, 8)),
    ((6, 5, 4), (-2, -3, -4), (8, 8, 8)),
    ((10, 10, 10), (-2, 8, 3), (4, 4, 4)),
    ((10, 10, 10), (12, 0, 0), (4, 4, 4)),  # nothing inside: all padding
]


@pytest.mark.parametrize(("shape", "start", "window"), PAD_CASES)
def test_extraction_pads_with_documented_values(
    shape: tuple[int, int, int], start: tuple[int, int, int], window: tuple[int, int, int]
) -> None:
    source = make_source(shape=shape, blobs={2: np.s_[0:3, 1:4, 0:2]}, with_weights=True)
    plan = PatchPlan(case_id=source.case_id, start=start, window=window)
    sample = extract_patch(source, plan)

    margin = 16
    pad = [(margin, margin)] * 3
    image = np.pad(source.image[0], pad, constant_values=IMAGE_PAD_VALUE)
    label = np.pad(source.label, pad, constant_values=LABEL_PAD_VALUE)
    weights = np.pad(source.weights, pad, constant_values=WEIGHTS_PAD_VALUE)
    box = tuple(slice(s + margin, s + margin + n) for s, n in zip(start, window, strict=True))
    np.testing.assert_array_equal(sample.image[0], image[box])
    np.testing.assert_array_equal(sample.label, label[box])
    np.testing.assert_array_equal(sample.weights, weights[box])
    assert (IMAGE_PAD_VALUE, LABEL_PAD_VALUE, WEIGHTS_PAD_VALUE) == (0.0, 0, 1.0)


def test_patch_larger_than_volume_holds_the_whole_volume() -> None:
    shape = (6, 5, 4)
    source = make_source(shape=shape, blobs={1: np.s_[0:2, 0:2, 0:2]}, with_weights=True)
    sampler = BatchSampler([source], patch_size=(8, 9, 4), batch_size=3, seed=0)
    for _ in range(10):
        batch = sampler.next_batch()
        assert batch.image.shape == (3, 1, 8, 9, 4)
        for image, label, weights in zip(batch.image, batch.label, batch.weights, strict=True):
            assert np.count_nonzero(label) == 8
            assert np.count_nonzero(weights == WEIGHTS_PAD_VALUE) == 8 * 9 * 4 - 6 * 5 * 4
            # The volume's coordinate 0 is itself 0, so count padding by the weights.
            inside = weights != WEIGHTS_PAD_VALUE
            assert np.all(image[0][~inside] == IMAGE_PAD_VALUE)
            assert np.array_equal(np.sort(image[0][inside]), np.sort(source.image[0].ravel()))


# --- fallback without foreground ------------------------------------------------------------


@pytest.mark.parametrize(
    "class_locations",
    [{}, {1: np.empty((0, 3), dtype=np.int64)}, {0: np.zeros((5, 3), dtype=np.int64)}],
    ids=["no-classes", "empty-class", "background-only"],
)
def test_case_without_foreground_falls_back_to_random(
    class_locations: dict[int, np.ndarray],
) -> None:
    shape = (10, 10, 10)
    empty = SampleSource(
        case_id="empty",
        image=np.zeros((1, *shape), dtype=np.float32),
        label=np.zeros(shape, dtype=np.uint8),
        class_locations=class_locations,
    )
    sampler = BatchSampler([empty], patch_size=(4, 4, 4), batch_size=3, seed=0)
    batch = sampler.next_batch()
    assert batch.foreground_forced.tolist() == [False, False, True]
    assert batch.foreground_fallback.tolist() == [False, False, True]
    assert batch.plans[-1].fell_back
    assert batch.plans[-1].foreground_class is None
    assert batch.label.shape == (3, 4, 4, 4)


def test_cases_are_chosen_uniformly() -> None:
    sources = [make_source(f"case{i}") for i in range(4)]
    sampler = BatchSampler(sources, patch_size=(4, 4, 4), batch_size=4, seed=8)
    counts = dict.fromkeys((s.case_id for s in sources), 0)
    for _ in range(500):
        for plan in sampler.plan_batch():
            counts[plan.case_id] += 1
    # 2000 draws, p = 1/4: standard deviation about 19.
    assert all(abs(n - 500) < 80 for n in counts.values())


# --- memory-mapped inputs -------------------------------------------------------------------


def memmapped_source(tmp_path: Path, source: SampleSource) -> SampleSource:
    arrays = {"image": source.image, "label": source.label, "weights": source.weights}
    arrays |= {f"class_{k}": v for k, v in source.class_locations.items()}
    loaded = {}
    for name, array in arrays.items():
        path = tmp_path / f"{source.case_id}_{name}.npy"
        np.save(path, array)
        loaded[name] = np.load(path, mmap_mode="r")
    return SampleSource(
        case_id=source.case_id,
        image=loaded["image"],
        label=loaded["label"],
        class_locations={k: loaded[f"class_{k}"] for k in source.class_locations},
        weights=loaded["weights"],
    )


@pytest.mark.parametrize(
    ("patch_size", "slice_axis"), [((8, 8, 8), None), ((30, 8, 8), None), ((8, 8), 1)]
)
def test_memmapped_sources_give_the_same_batches(
    tmp_path: Path, patch_size: tuple[int, ...], slice_axis: int | None
) -> None:
    in_memory = [make_source("a", with_weights=True), make_source("b", with_weights=True)]
    mapped = [memmapped_source(tmp_path, s) for s in in_memory]
    assert isinstance(mapped[0].image, np.memmap)
    options = {"patch_size": patch_size, "slice_axis": slice_axis, "batch_size": 4, "seed": 5}
    reference, sampler = BatchSampler(in_memory, **options), BatchSampler(mapped, **options)
    for _ in range(5):
        expected, batch = reference.next_batch(), sampler.next_batch()
        assert_batches_equal(batch, expected)
        np.testing.assert_array_equal(batch.weights, expected.weights)
        for array in (batch.image, batch.label, batch.weights):
            assert type(array) is np.ndarray
            assert array.flags.writeable


def test_sampling_does_not_copy_whole_volumes(tmp_path: Path) -> None:
    shape = (96, 96, 96)  # 3.4 MiB of float32 per array
    label = np.zeros(shape, dtype=np.uint8)
    label[80:84, 5:9, 70:74] = 1
    np.save(tmp_path / "image.npy", np.ones((1, *shape), dtype=np.float32))
    np.save(tmp_path / "label.npy", label)
    np.save(tmp_path / "weights.npy", np.ones(shape, dtype=np.float32))
    source = SampleSource(
        case_id="big",
        image=np.load(tmp_path / "image.npy", mmap_mode="r"),
        label=np.load(tmp_path / "label.npy", mmap_mode="r"),
        class_locations={1: np.argwhere(label == 1)},
        weights=np.load(tmp_path / "weights.npy", mmap_mode="r"),
    )
    sampler = BatchSampler([source], patch_size=(16, 16, 16), batch_size=2, seed=0)

    tracemalloc.start()
    try:
        for _ in range(5):
            sampler.next_batch()
        _, sampling_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        np.array(source.image)  # control: a full copy is visible to the measurement
        _, copy_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    volume_bytes = 4 * math.prod(shape)
    assert copy_peak >= volume_bytes
    assert sampling_peak < volume_bytes / 10


# --- validation -----------------------------------------------------------------------------


def test_invalid_sources_are_rejected() -> None:
    shape = (6, 6, 6)
    image = np.zeros((1, *shape), dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    cases = [
        (
            dict(image=image[0], label=label, class_locations={}),
            InvalidSampleSourceError,
            "image must be",
        ),
        (
            dict(image=image, label=label[..., :5], class_locations={}),
            GeometryMismatchError,
            "label shape",
        ),
        (
            dict(image=image, label=label, class_locations={}, weights=label[:5]),
            GeometryMismatchError,
            "weights shape",
        ),
        (
            dict(image=image, label=label, class_locations={1: np.zeros((3, 2), dtype=int)}),
            InvalidSampleSourceError,
            "must be \\(N, 3\\)",
        ),
        (
            dict(image=image, label=label, class_locations={1: np.array([[0, 6, 0]])}),
            InvalidSampleSourceError,
            "outside the volume",
        ),
    ]
    for arguments, error, message in cases:
        with pytest.raises(error, match=f"case bad: .*{message}"):
            SampleSource(case_id="bad", **arguments)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"patch_size": (8, 8)}, "3 sizes"),
        ({"patch_size": (8, 8, 8), "slice_axis": 2}, "2 sizes"),
        ({"patch_size": (8, 8), "slice_axis": 3}, "slice_axis"),
        ({"patch_size": (8, 0, 8)}, "positive"),
        ({"patch_size": (8, 8, 8), "foreground_fraction": 1.5}, "foreground_fraction"),
        ({"patch_size": (8, 8, 8), "batch_size": 0}, "batch_size"),
    ],
)
def test_invalid_sampler_options_are_rejected(options: dict[str, object], message: str) -> None:
    arguments = {"batch_size": 2, "seed": 0} | options
    with pytest.raises(SamplingConfigError, match=message):
        BatchSampler([make_source()], **arguments)


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ([], "at least one case"),
        ([make_source("a"), make_source("a")], "unique"),
        ([make_source("a"), make_source("b", with_weights=True)], "weights"),
        ([make_source("a"), make_source("b", channels=2)], "channel"),
    ],
)
def test_inconsistent_sources_are_rejected(sources: list[SampleSource], message: str) -> None:
    with pytest.raises(InvalidSampleSourceError, match=message):
        BatchSampler(sources, patch_size=(4, 4, 4), batch_size=2, seed=0)
