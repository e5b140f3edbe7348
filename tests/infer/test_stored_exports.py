"""A packaged model carries its export: prediction with ONNX Runtime or OpenVINO runs the
stored ONNX graph instead of exporting the network again (seconds per command and worker)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medseg.infer.backends import EXPORT_ONNX
from medseg.infer.choices import Backend, Precision
from medseg.infer.options import PredictionOptions
from medseg.infer.predictor import load_packaged_model
from medseg.infer.stage import scan_predictors
from tests.packaged_model import build_packaged_model
from tests.tiny_dataset import TinyDataset


@pytest.mark.parametrize("backend", [Backend.ONNXRUNTIME, Backend.OPENVINO])
def test_prediction_runs_the_export_stored_with_the_model(
    backend: Backend,
    tiny_dataset: TinyDataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uri, tracking = build_packaged_model(tiny_dataset.plan, tmp_path)
    model = load_packaged_model(uri, tracking_uri=tracking)
    stored = model.members[0].exports[EXPORT_ONNX]
    assert stored.suffix == ".onnx" and stored.stat().st_size > 10_000

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network was exported again")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    options = PredictionOptions(backend=backend, precision=Precision.FP32)
    cache = tmp_path / "cache"
    [predictor] = scan_predictors(model, options, cache_dir=cache)
    patch = tiny_dataset.plan.configurations["3d"].patch_size
    batch = torch.randn((2, 1, *patch), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model.members[0].network(batch)
        expected = expected[0] if isinstance(expected, list | tuple) else expected
        logits = predictor(batch)
    assert (logits - expected).abs().max().item() < 1e-3
    assert not cache.exists() or not any(cache.iterdir())
