"""Class probabilities added slab by slab and read back one class at a time, in memory and in a
temporary file; and the sliding window's slabs, which feed them."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import torch
from torch import nn

from medseg.infer import sliding_window
from medseg.infer.predictor import accumulator_dtype
from medseg.infer.probability_store import ClassProbabilities
from medseg.infer.sliding_window import (
    probability_slabs,
    sliding_window_predict,
    sliding_window_slabs,
)
from medseg.preprocess.plan import Configuration


def _members(count: int, shape: tuple[int, ...]) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.random(shape, dtype=np.float32) for _ in range(count)]


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("in_memory_limit", [None, 0])
def test_slabs_of_each_member_add_up_to_the_mean_of_the_members(
    axis: int, in_memory_limit: int | None
) -> None:
    grid = (7, 5, 6)
    members = _members(3, (4, *grid))
    store = ClassProbabilities(4, grid, axis=axis, in_memory_limit=in_memory_limit)
    assert store.in_memory == (in_memory_limit is None)
    cuts = [0, 2, 3, grid[axis]]  # uneven slabs, as the sliding window gives them
    for member in members:
        for start, stop in itertools.pairwise(cuts):
            slab = np.take(member, range(start, stop), axis=axis + 1)
            store.add(start, torch.from_numpy(slab) if start else slab)
        store.end_member()
    mean = np.mean(members, axis=0)
    assert len(store) == 4 and store.shape == (4, *grid)
    for index in range(4):
        np.testing.assert_allclose(store[index], mean[index], rtol=1e-6)
    np.testing.assert_allclose(store.tensor().numpy(), mean, rtol=1e-6)
    with pytest.raises(IndexError, match="class 4 of 4"):
        store[4]
    store.close()


def test_a_store_over_its_memory_limit_keeps_its_sums_in_a_file_it_removes() -> None:
    with ClassProbabilities(118, (64, 64, 32), axis=2, in_memory_limit=2**20) as store:
        assert not store.in_memory
        assert store._file is not None
        descriptor = store._file.fileno()
        store.add(0, np.ones((118, 64, 64, 32), np.float32))
        store.end_member()
        assert store[117].shape == (64, 64, 32) and float(store[117].mean()) == 1.0
    with pytest.raises(OSError):  # closed, and an unnamed file is gone once closed
        os.fstat(descriptor)


class _Classes(nn.Module):
    """Logits that depend on the voxel values and their neighbours, so windows and flips
    matter."""

    def __init__(self, classes: int, dims: int) -> None:
        super().__init__()
        convolution = nn.Conv3d if dims == 3 else nn.Conv2d
        self.layer = convolution(1, classes, 3, padding=1)
        torch.manual_seed(3)
        nn.init.normal_(self.layer.weight)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.layer(batch)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("shape", [(20, 17, 33), (5, 30, 6)])  # the second pads axes 0 and 2
def test_sliding_window_slabs_give_each_slice_once_in_order_and_the_whole_prediction(
    axis: int, shape: tuple[int, int, int]
) -> None:
    image = torch.randn(1, *shape)
    network = _Classes(3, dims=3)
    options = {"patch_size": (8, 8, 8), "num_classes": 3, "overlap": 0.5, "mirror_axes": (1,)}
    whole = sliding_window_predict(network, image, **options)  # type: ignore[arg-type]
    slabs = list(sliding_window_slabs(network, image, axis=axis, **options))  # type: ignore[arg-type]
    starts = [start for start, _ in slabs]
    lengths = [slab.shape[axis + 1] for _, slab in slabs]
    assert starts == list(np.cumsum([0, *lengths[:-1]])) and sum(lengths) == shape[axis]
    if shape[axis] > 8:
        assert len(slabs) > 1 and max(lengths) <= 8  # finished rows leave before the end
    torch.testing.assert_close(torch.cat([s for _, s in slabs], dim=axis + 1), whole)


def test_finished_slices_leave_in_chunks_of_the_chunk_size_with_the_same_prediction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = torch.randn(1, 20, 17, 33)
    network = _Classes(3, dims=3)
    options = {"patch_size": (8, 8, 16), "num_classes": 3, "overlap": 0.5}
    whole = sliding_window_predict(network, image, **options)  # type: ignore[arg-type]
    slice_bytes = 4 * 3 * 20 * 17
    monkeypatch.setattr(sliding_window, "SLAB_CHUNK_BYTES", 3 * slice_bytes)
    slabs = list(sliding_window_slabs(network, image, **options))  # type: ignore[arg-type]
    lengths = [slab.shape[3] for _, slab in slabs]
    # a row of windows finishes 8 slices (16 x 0.5): they leave 3 at a time, never 8
    assert max(lengths) == 3 and sum(lengths) == 33 and len(slabs) >= 11
    torch.testing.assert_close(torch.cat([s for _, s in slabs], dim=3), whole)
    monkeypatch.setattr(sliding_window, "SLAB_CHUNK_BYTES", 1)  # below one slice: one each
    assert {s.shape[3] for _, s in sliding_window_slabs(network, image, **options)} == {1}  # type: ignore[arg-type]


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_activations_overwrite_the_logits_with_the_probabilities(activation: str) -> None:
    logits = 30 * torch.randn(2, 118, 4, 5, 6)  # large logits: the softmax must not overflow
    expected = torch.softmax(logits, 1) if activation == "softmax" else torch.sigmoid(logits)
    probabilities = sliding_window.ACTIVATIONS[activation](logits)
    assert probabilities.data_ptr() == logits.data_ptr()  # no window-sized copy
    torch.testing.assert_close(probabilities, expected)


def test_a_2d_network_streams_slice_by_slice_along_its_slice_axis() -> None:
    image = torch.randn(1, 9, 12, 10)
    network = _Classes(2, dims=2)
    common = {"patch_size": (8, 8), "num_classes": 2, "slice_axis": 1, "mirror": True}
    along = list(probability_slabs(network, image, axis=1, **common))  # type: ignore[arg-type]
    across = list(probability_slabs(network, image, axis=2, **common))  # type: ignore[arg-type]
    assert [start for start, _ in along] == list(range(12))
    assert len(across) == 1 and across[0][1].shape == (2, 9, 12, 10)
    torch.testing.assert_close(torch.cat([s for _, s in along], dim=2), across[0][1])


def test_a_float16_accumulator_moves_probabilities_by_1e_3_and_the_argmax_almost_never() -> None:
    image = torch.randn(1, 40, 36, 44)
    network = _Classes(12, dims=3)
    options = {"patch_size": (16, 16, 16), "num_classes": 12, "overlap": 0.5}
    exact = torch.cat([s for _, s in sliding_window_slabs(network, image, **options)], dim=3)  # type: ignore[arg-type]
    halved = sliding_window_slabs(network, image, accumulator_dtype=torch.float16, **options)  # type: ignore[arg-type]
    rounded = torch.cat([s for _, s in halved], dim=3)
    assert rounded.dtype == torch.float32
    difference = (rounded - exact).abs().max().item()
    assert 0 < difference < 2e-3
    agreement = (rounded.argmax(0) == exact.argmax(0)).float().mean().item()
    assert agreement >= 0.999


def test_the_accumulator_goes_float16_only_when_one_row_of_it_is_large() -> None:
    patch = Configuration(name="3d", patch_size=[96, 96, 96], batch_size=1, pool_strides=[])
    assert accumulator_dtype(118, (273, 273, 267), 2, [patch]) == torch.float16  # 3.4 GB as float32
    assert accumulator_dtype(8, (273, 273, 267), 2, [patch]) == torch.float32  # 218 MB
    assert accumulator_dtype(3, (40, 56, 40), 2, [patch]) == torch.float32
