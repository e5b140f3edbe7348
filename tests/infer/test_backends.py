"""Inference backends: ONNX Runtime and OpenVINO reproduce the PyTorch network."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medseg.errors import MedsegError
from medseg.infer.backends import Backend, export_onnx, make_predictor
from medseg.infer.sliding_window import sliding_window_predict
from medseg.models import build_network
from tests.phantoms import small_phantom

logger = logging.getLogger(__name__)

PATCH_SIZE = (24, 32, 24)  # divisible by 8 (three stride-2 levels)
NUM_CLASSES = 3
EXPORTED_BACKENDS = [Backend.ONNXRUNTIME, Backend.OPENVINO]


def _require_package(backend: Backend) -> None:
    pytest.importorskip(
        backend.value, reason=f"{backend.value} is not installed (pip install {backend.value})"
    )


@pytest.fixture(scope="module")
def network() -> nn.Module:
    """A small 3D U-Net with seeded random weights, in eval mode."""
    torch.manual_seed(0)
    network = build_network(
        architecture="unet",
        in_channels=1,
        num_classes=NUM_CLASSES,
        spatial_dims=3,
        pool_strides=[[2, 2, 2]] * 3,
        base_filters=8,
        deep_supervision=True,
    )
    return network.eval()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One export cache for the module, so the network is exported once."""
    return tmp_path_factory.mktemp("onnx_cache")


@pytest.fixture(scope="module")
def phantom_image() -> torch.Tensor:
    """A phantom CT z-scored and zero-padded to a multiple of 8 per axis: (1, 56, 40, 40)."""
    ct, _ = small_phantom(0)
    voxels = ct.array.astype(np.float32)
    voxels = (voxels - voxels.mean()) / voxels.std()
    padding = [(0, -size % 8) for size in voxels.shape]
    return torch.from_numpy(np.pad(voxels, padding))[None]


@pytest.fixture(scope="module")
def torch_probabilities(network: nn.Module, phantom_image: torch.Tensor) -> torch.Tensor:
    return _predict(network, phantom_image)


def _predict(predictor: nn.Module, image: torch.Tensor) -> torch.Tensor:
    # 2x2x2 windows in batches of 3: the last batch has two (the batch axis is dynamic).
    return sliding_window_predict(
        predictor,
        image,
        patch_size=PATCH_SIZE,
        num_classes=NUM_CLASSES,
        overlap=0.25,
        batch_size=3,
    )


def test_torch_backend_is_the_network_in_eval_mode(network: nn.Module) -> None:
    network.train()
    predictor = make_predictor(
        network, backend=Backend.TORCH, patch_size=PATCH_SIZE, in_channels=1, batch_size=2
    )
    assert predictor is network
    assert not network.training


@pytest.mark.parametrize("backend", EXPORTED_BACKENDS)
def test_logits_match_torch(backend: Backend, network: nn.Module, cache_dir: Path) -> None:
    _require_package(backend)
    predictor = make_predictor(
        network,
        backend=backend,
        patch_size=PATCH_SIZE,
        in_channels=1,
        batch_size=2,
        cache_dir=cache_dir,
    )
    batch = torch.randn((3, 1, *PATCH_SIZE), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = network(batch)
        logits = predictor(batch)
    difference = (logits - expected).abs().max().item()
    logger.info("%s: max abs logit difference to torch %.2e", backend, difference)
    assert logits.shape == (3, NUM_CLASSES, *PATCH_SIZE)
    assert logits.dtype == torch.float32
    assert difference < 1e-3, f"{backend}: max abs logit difference {difference:.2e}"


@pytest.mark.parametrize("backend", EXPORTED_BACKENDS)
def test_argmax_agrees_with_torch_on_a_phantom_scan(
    backend: Backend,
    network: nn.Module,
    cache_dir: Path,
    phantom_image: torch.Tensor,
    torch_probabilities: torch.Tensor,
) -> None:
    _require_package(backend)
    predictor = make_predictor(
        network,
        backend=backend,
        patch_size=PATCH_SIZE,
        in_channels=1,
        batch_size=2,
        cache_dir=cache_dir,
    )
    assert phantom_image.shape == (1, 56, 40, 40)
    probabilities = _predict(predictor, phantom_image)
    agreement = (probabilities.argmax(0) == torch_probabilities.argmax(0)).double().mean().item()
    difference = (probabilities - torch_probabilities).abs().max().item()
    logger.info(
        "%s: argmax agreement %.6f, max abs probability diff %.2e", backend, agreement, difference
    )
    assert agreement >= 0.999, f"{backend}: argmax agreement {agreement:.5f}"
    assert difference < 1e-3


def test_cached_export_is_reused(
    network: nn.Module, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx onnxscript)")
    path = export_onnx(network, patch_size=PATCH_SIZE, in_channels=1, cache_dir=cache_dir)
    written = path.stat().st_mtime_ns

    def fail_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network was exported again")

    monkeypatch.setattr(torch.onnx, "export", fail_export)
    again = export_onnx(network, patch_size=PATCH_SIZE, in_channels=1, cache_dir=cache_dir)
    assert again == path
    assert path.stat().st_mtime_ns == written
    assert sorted(file.name for file in cache_dir.iterdir()) == [path.name]


def test_changed_weights_are_exported_again(
    network: nn.Module, cache_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx onnxscript)")
    first = export_onnx(network, patch_size=PATCH_SIZE, in_channels=1, cache_dir=cache_dir)
    changed = build_network(
        architecture="unet",
        in_channels=1,
        num_classes=NUM_CLASSES,
        spatial_dims=3,
        pool_strides=[[2, 2, 2]] * 3,
        base_filters=8,
        deep_supervision=True,
    )
    changed.load_state_dict(network.state_dict())
    with torch.no_grad():
        next(changed.parameters()).add_(1.0)
    second = export_onnx(changed.eval(), patch_size=PATCH_SIZE, in_channels=1, cache_dir=tmp_path)
    assert second.name != first.name
    assert second.is_file()


def test_export_leaves_the_network_trainable(tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx onnxscript)")
    torch.manual_seed(0)
    network = build_network(
        architecture="unet",
        in_channels=1,
        num_classes=NUM_CLASSES,
        spatial_dims=3,
        pool_strides=[[2, 2, 2]] * 3,
        base_filters=8,
        deep_supervision=True,
    )
    export_onnx(network, patch_size=PATCH_SIZE, in_channels=1, cache_dir=tmp_path)
    outputs = network.train()(torch.zeros((2, 1, *PATCH_SIZE)))
    assert [tuple(output.shape) for output in outputs] == [(2, NUM_CLASSES, *PATCH_SIZE)] * 2


def test_2d_network_matches_torch(tmp_path: Path) -> None:
    _require_package(Backend.ONNXRUNTIME)
    torch.manual_seed(0)
    network = build_network(
        architecture="unet",
        in_channels=2,
        num_classes=NUM_CLASSES,
        spatial_dims=2,
        pool_strides=[[2, 2]] * 2,
        base_filters=8,
    )
    predictor = make_predictor(
        network,
        backend=Backend.ONNXRUNTIME,
        patch_size=(32, 48),
        in_channels=2,
        batch_size=4,
        cache_dir=tmp_path,
    )
    batch = torch.randn((5, 2, 32, 48), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        difference = (predictor(batch) - network(batch)).abs().max().item()
    assert difference < 1e-3


def test_openvino_bf16_runs_close_to_torch_or_is_refused_by_the_cpu(
    network: nn.Module, cache_dir: Path
) -> None:
    openvino = pytest.importorskip("openvino", reason="openvino is not installed")
    options = {"patch_size": PATCH_SIZE, "in_channels": 1, "batch_size": 2, "precision": "bf16"}
    if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(MedsegError, match="precision 'bf16' requested but this CPU supports"):
            make_predictor(network, backend=Backend.OPENVINO, cache_dir=cache_dir, **options)
        return
    predictor = make_predictor(network, backend=Backend.OPENVINO, cache_dir=cache_dir, **options)
    batch = torch.randn((2, 1, *PATCH_SIZE), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        difference = (predictor(batch) - network(batch)).abs().max().item()
    logger.info("openvino bf16: max abs logit difference to torch %.2e", difference)
    assert difference < 0.5


def test_missing_backend_package_names_it(
    network: nn.Module, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` fail
    with pytest.raises(
        MedsegError, match=r"backend .openvino. needs the Python package .openvino..*pip install"
    ):
        make_predictor(
            network,
            backend=Backend.OPENVINO,
            patch_size=PATCH_SIZE,
            in_channels=1,
            batch_size=2,
            cache_dir=cache_dir,
        )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"backend": "tensorrt"},
            r"unknown backend 'tensorrt'; known: auto, torch, onnxruntime, openvino",
        ),
        ({"backend": "openvino", "precision": "fp8"}, r"unknown precision 'fp8'"),
        ({"backend": "onnxruntime", "precision": "bf16"}, r"only supported by backend 'openvino'"),
        ({"backend": "torch", "batch_size": 0}, r"batch_size must be at least 1"),
    ],
)
def test_invalid_options_are_rejected(
    network: nn.Module, arguments: dict[str, object], message: str
) -> None:
    options: dict[str, object] = {"patch_size": PATCH_SIZE, "in_channels": 1, "batch_size": 2}
    with pytest.raises(MedsegError, match=message):
        make_predictor(network, **(options | arguments))


def test_wrong_window_shape_is_rejected(network: nn.Module, cache_dir: Path) -> None:
    _require_package(Backend.ONNXRUNTIME)
    predictor = make_predictor(
        network,
        backend=Backend.ONNXRUNTIME,
        patch_size=PATCH_SIZE,
        in_channels=1,
        batch_size=2,
        cache_dir=cache_dir,
    )
    with pytest.raises(MedsegError, match=r"takes batches of shape \(B, 1, 24, 32, 24\)"):
        predictor(torch.zeros((2, 1, 16, 32, 24)))
