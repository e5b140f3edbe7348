"""Confidence per structure: the mean largest class probability inside the structure and on
its boundary band, on the networks' grid, carried by the label map ``predict_scan`` returns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from medseg.infer.confidence import argmax_and_max, normalised_entropy, structure_confidence
from medseg.infer.options import PredictionOptions
from medseg.infer.predictor import PackagedModel, predict_scan
from tests.phantoms import small_phantom
from tests.tiny_dataset import TinyDataset


def test_the_argmax_and_the_largest_probability_of_every_voxel() -> None:
    maps = np.array([[0.5, 0.2, 0.3, 0.1], [0.3, 0.5, 0.35, 0.2], [0.2, 0.3, 0.35, 0.7]])
    maps = maps.astype(np.float32)[:, :, None, None]
    before = maps.copy()
    winner, best = argmax_and_max(maps)
    np.testing.assert_array_equal(winner[:, 0, 0], [0, 1, 1, 2])  # a tie: the first class
    np.testing.assert_allclose(best[:, 0, 0], [0.5, 0.5, 0.35, 0.7])
    np.testing.assert_array_equal(maps, before)


def test_the_normalised_entropy_is_0_when_sure_and_1_when_every_class_is_alike() -> None:
    maps = np.array([[1.0, 0.25, 0.5], [0.0, 0.25, 0.5], [0.0, 0.25, 0.0], [0.0, 0.25, 0.0]])
    entropy = normalised_entropy(maps.astype(np.float32)[:, :, None, None])[:, 0, 0]
    np.testing.assert_allclose(entropy, [0.0, 1.0, 0.5], atol=1e-6)  # ln 2 / ln 4 = 0.5


def test_inside_and_boundary_band_means_of_a_cube() -> None:
    """A 4^3 cube of label 1: its 8 core voxels at 1.0, its 56 surface voxels at 0.7, the 96
    voxels touching its faces from outside at 0.5, everything else at 0.9."""
    winner = np.zeros((10, 10, 10), np.uint16)
    winner[3:7, 3:7, 3:7] = 1
    best = np.full(winner.shape, 0.9, np.float32)
    best[2:8, 3:7, 3:7] = best[3:7, 2:8, 3:7] = best[3:7, 3:7, 2:8] = 0.5  # face neighbours
    best[3:7, 3:7, 3:7] = 0.7
    best[4:6, 4:6, 4:6] = 1.0
    scores = structure_confidence(winner, best, {1: "cube", 2: "absent"})
    assert scores["cube"]["confidence"] == pytest.approx((8 * 1.0 + 56 * 0.7) / 64, abs=1e-6)
    band = (56 * 0.7 + 96 * 0.5) / (56 + 96)
    assert scores["cube"]["boundary_confidence"] == pytest.approx(band, abs=1e-6)
    assert scores["absent"] == {"confidence": None, "boundary_confidence": None}


class _Sure(nn.Module):
    """Logits from each voxel's own intensity: class 1 at 2 where the normalised intensity is
    above 0, else background at 2; every other class at 0."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros((batch.shape[0], self.classes, *batch.shape[2:]))
        bright = batch[:, 0] > 0
        logits[:, 1] = torch.where(bright, 2.0, 0.0)
        logits[:, 0] = torch.where(bright, 0.0, 2.0)
        return logits


def test_predict_scan_reports_the_networks_own_probability(tiny_dataset: TinyDataset) -> None:
    plan = tiny_dataset.plan
    classes = plan.num_outputs
    model = PackagedModel.of_network(
        _Sure(classes), plan=plan, configuration="3d", label_names=plan.label_names
    )
    ct, _ = small_phantom(1)
    labels = predict_scan(ct, model, options=PredictionOptions(), case_id="c")
    scores = labels.metadata["confidence"]
    # every window gives each voxel the same logits, so the blended probability is exact
    expected = math.exp(2) / (math.exp(2) + classes - 1)
    names = [name for value, name in plan.label_names.items() if value]
    assert sorted(scores) == sorted(names)
    found = plan.label_names[1]
    assert scores[found]["confidence"] == pytest.approx(expected, abs=1e-3)
    assert scores[found]["boundary_confidence"] == pytest.approx(expected, abs=1e-3)
    assert all(scores[name]["confidence"] is None for name in names if name != found)
    only = predict_scan(ct, model, options=PredictionOptions(structures=[found]), case_id="c")
    assert only.metadata["confidence"] == {found: scores[found]}
