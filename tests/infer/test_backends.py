"""Inference backends: ONNX Runtime and OpenVINO reproduce the PyTorch network."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medseg.errors import BackendError, MedsegError
from medseg.infer.agreement import export_for_package
from medseg.infer.auto import cpu_supports_bf16
from medseg.infer.backends import EXPORT_INT8, EXPORT_ONNX, Backend, export_onnx, make_predictor
from medseg.infer.choices import Precision
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


def _exported(backend: Backend, network: nn.Module, cache_dir: Path) -> nn.Module:
    """The network on ``backend`` for 1-channel ``PATCH_SIZE`` windows (exported once)."""
    _require_package(backend)
    return make_predictor(
        network,
        backend=backend,
        patch_size=PATCH_SIZE,
        in_channels=1,
        batch_size=2,
        cache_dir=cache_dir,
    )


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
    predictor = _exported(backend, network, cache_dir)
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
    predictor = _exported(backend, network, cache_dir)
    assert phantom_image.shape == (1, 56, 40, 40)
    probabilities = _predict(predictor, phantom_image)
    agreement = (probabilities.argmax(0) == torch_probabilities.argmax(0)).double().mean().item()
    difference = (probabilities - torch_probabilities).abs().max().item()
    logger.info(
        "%s: argmax agreement %.6f, max abs probability diff %.2e", backend, agreement, difference
    )
    assert agreement >= 0.999, f"{backend}: argmax agreement {agreement:.5f}"
    assert difference < 1e-3


@pytest.mark.parametrize("backend", EXPORTED_BACKENDS)
def test_mirrored_probabilities_match_torch(
    backend: Backend, network: nn.Module, cache_dir: Path, phantom_image: torch.Tensor
) -> None:
    """Mirroring calls the engine several times per window: an engine that hands back its own
    output memory (OpenVINO) must not overwrite the flips already taken."""
    predictor = _exported(backend, network, cache_dir)
    settings = {"patch_size": PATCH_SIZE, "num_classes": NUM_CLASSES, "mirror_axes": (0, 2)}
    with torch.inference_mode():
        expected = sliding_window_predict(network, phantom_image, **settings)
        mirrored = sliding_window_predict(predictor, phantom_image, **settings)
    difference = (mirrored - expected).abs().max().item()
    assert difference < 1e-3, f"{backend}: max abs probability difference {difference:.2e}"


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


def _calibration_patches(image: torch.Tensor, count: int) -> list[np.ndarray]:
    """``count`` windows of the phantom image at seeded random places, ``(1, 1, *PATCH_SIZE)``."""
    generator = np.random.default_rng(0)
    patches = []
    for _ in range(count):
        starts = [generator.integers(0, size - patch + 1) for size, patch in
                  zip(image.shape[1:], PATCH_SIZE, strict=True)]  # fmt: skip
        window = tuple(slice(s, s + p) for s, p in zip(starts, PATCH_SIZE, strict=True))
        patches.append(image[(slice(None), *window)][None].numpy())
    return patches


def test_packaging_exports_quantizes_and_measures_each_precision(
    network: nn.Module,
    phantom_image: torch.Tensor,
    torch_probabilities: torch.Tensor,
    tmp_path: Path,
) -> None:
    """``medseg train --int8``'s packaging step: the fp32 ONNX graph and an int8 OpenVINO
    network calibrated on patches, with the argmax agreement of bf16 (on a CPU with bf16
    units) and int8 with fp32; the int8 network runs from the stored file and tracks fp32."""
    _require_package(Backend.OPENVINO)
    pytest.importorskip("nncf", reason="nncf is not installed: pip install 'medseg[cpu-inference]'")
    exports = export_for_package(
        network,
        [phantom_image.numpy()],
        folder=tmp_path,
        patch_size=PATCH_SIZE,
        in_channels=1,
        num_classes=NUM_CLASSES,
        overlap=0.25,
        calibration_patches=_calibration_patches(phantom_image, 16),
    )
    int8 = exports.files[EXPORT_INT8]
    assert exports.files[EXPORT_ONNX].parent == tmp_path
    assert int8.name == "network.xml" and int8.with_suffix(".bin").is_file()
    assert "FakeQuantize" in int8.read_text()  # quantized, not a copy of the fp32 network
    expected = {"bf16", "int8"} if cpu_supports_bf16() else {"int8"}
    assert set(exports.agreement) == expected
    probabilities = _predict(_int8_predictor(network, exports.files), phantom_image)
    agreement = (probabilities.argmax(0) == torch_probabilities.argmax(0)).double().mean().item()
    correlation = np.corrcoef(probabilities.flatten(), torch_probabilities.flatten())[0, 1]
    logger.info("int8: argmax agreement %.5f, stored %.5f, probability correlation %.5f",
                agreement, exports.agreement["int8"], correlation)  # fmt: skip
    assert agreement == pytest.approx(exports.agreement["int8"], abs=0.02)
    # random weights: near-ties everywhere, so int8 flips 8% of the labels (0.922) while the
    # probabilities follow fp32's (correlation 0.986, measured); a trained network's agreement
    # is checked in tests/infer/test_end_to_end.py
    assert agreement >= 0.9 and correlation >= 0.98


def test_int8_without_a_quantized_network_is_refused(network: nn.Module) -> None:
    _require_package(Backend.OPENVINO)
    with pytest.raises(BackendError, match="has none \\(train it with --int8\\)"):
        _int8_predictor(network, {})


def _int8_predictor(network: nn.Module, exports: dict[str, Path]) -> nn.Module:
    return make_predictor(
        network,
        backend=Backend.OPENVINO,
        precision=Precision.INT8,
        patch_size=PATCH_SIZE,
        in_channels=1,
        batch_size=2,
        exports=exports,
    )
