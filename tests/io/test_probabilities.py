"""``<case>.probabilities.npz`` streamed class by class: the same file ``np.savez_compressed``
writes, never more than a class map or two in memory, and nothing under the name unless
complete."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from medseg.io.probabilities import ProbabilityWriter

SHAPE = (64, 48, 40)


def _channels(count: int) -> list[np.ndarray]:
    generator = np.random.default_rng(0)
    return [generator.random(SHAPE, dtype=np.float32) for _ in range(count)]


def test_the_streamed_file_is_what_savez_compressed_writes(tmp_path: Path) -> None:
    channels, affine = _channels(3), np.diag([0.8, 0.8, 1.5, 1.0])
    path = tmp_path / "case.probabilities.npz"
    with ProbabilityWriter(path, classes=3, shape=SHAPE, affine_ras=affine) as writer:
        for channel in channels:
            writer.append(channel)
    np.savez_compressed(
        tmp_path / "reference.npz",
        probabilities=np.stack(channels).astype(np.float16),
        affine_ras=affine,
    )
    with np.load(path) as written, np.load(tmp_path / "reference.npz") as reference:
        assert sorted(written.files) == ["affine_ras", "probabilities"]
        assert written["probabilities"].dtype == np.float16
        assert written["probabilities"].shape == (3, *SHAPE)
        np.testing.assert_array_equal(written["probabilities"], reference["probabilities"])
        np.testing.assert_array_equal(written["affine_ras"], reference["affine_ras"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.probabilities.npz", "reference.npz"]


def test_memory_holds_one_class_map_not_all_of_them(tmp_path: Path) -> None:
    channels = _channels(2)
    size = channels[0].nbytes  # a float32 map; the 40 maps in float16 would be 20x this
    with ProbabilityWriter(
        tmp_path / "p.npz", classes=40, shape=SHAPE, affine_ras=np.eye(4)
    ) as writer:
        tracemalloc.start()
        for index in range(40):
            writer.append(channels[index % 2])
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # a float16 copy of the map and its compressed bytes at most
    assert peak < 2 * size, f"peak {peak / size:.2f} float32 class maps"
    with np.load(tmp_path / "p.npz") as written:
        assert written["probabilities"].shape == (40, *SHAPE)
        np.testing.assert_array_equal(written["probabilities"][39], channels[1].astype(np.float16))


@pytest.mark.parametrize("appended", [0, 2])
def test_an_incomplete_file_is_an_error_and_leaves_nothing(tmp_path: Path, appended: int) -> None:
    path = tmp_path / "case.probabilities.npz"
    with (
        pytest.raises(ValueError, match=f"case.probabilities.npz: {appended} of 3 class maps"),
        ProbabilityWriter(path, classes=3, shape=SHAPE, affine_ras=np.eye(4)) as writer,
    ):
        for channel in _channels(appended):
            writer.append(channel)
    assert not list(tmp_path.iterdir())


def test_a_map_of_another_shape_or_one_too_many_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "case.probabilities.npz"
    with (
        pytest.raises(ValueError, match=r"shape \(64, 48, 39\), expected \(64, 48, 40\)"),
        ProbabilityWriter(path, classes=1, shape=SHAPE, affine_ras=np.eye(4)) as writer,
    ):
        writer.append(np.zeros((64, 48, 39), np.float32))
    assert not list(tmp_path.iterdir())  # an error inside the block writes nothing
    with (
        pytest.raises(ValueError, match="more than 1 class maps"),
        ProbabilityWriter(path, classes=1, shape=SHAPE, affine_ras=np.eye(4)) as writer,
    ):
        writer.append(np.zeros(SHAPE, np.float32))
        writer.append(np.zeros(SHAPE, np.float32))
    assert not list(tmp_path.iterdir())
