"""Inference backends behind one interface: PyTorch, ONNX Runtime or OpenVINO on the CPU.

``make_predictor`` turns a trained network into a module that ``sliding_window_predict`` calls
in place of the network: ``forward`` maps a float32 batch ``(B, C, *patch)`` to logits
``(B, K, *patch)``. The ONNX backends export the network once (``torch.onnx.export`` with
``dynamo=True``, fixed patch size, dynamic batch axis) into a cache folder; the file name holds
a hash of the architecture, the weights, the patch size and the exporter versions, so a later
run with the same model reuses the file instead of exporting again (several seconds for a 3D
U-Net). Files are written under a temporary name and renamed, so concurrent runs never read a
half-written export. A model packaged by ``medseg train`` carries its exports (the fp32 ONNX
graph, and with ``--int8`` the quantized OpenVINO network): ``make_predictor`` runs those and
exports nothing.

Example:
    >>> predictor = make_predictor(
    ...     network, backend=Backend.OPENVINO, patch_size=(40, 56, 40), in_channels=1,
    ...     batch_size=2,
    ... )
    >>> probabilities = sliding_window_predict(
    ...     predictor, image, patch_size=(40, 56, 40), num_classes=3
    ... )
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg.errors import BackendError, MissingDependencyError
from medseg.infer.choices import Backend, Precision
from medseg.lookup import look_up_option

logger = logging.getLogger(__name__)

ONNX_OPSET = 20
"""ONNX opset of exported networks (supported by ONNX Runtime >= 1.17 and OpenVINO >= 2024)."""


INSTALL_HINT = "`pip install 'medseg[cpu-inference]'`"

EXPORT_ONNX = "onnx"
"""Key of a packaged network's fp32 ONNX export (run at fp32 by both runtimes, at bf16 by
OpenVINO)."""
EXPORT_INT8 = "int8"
"""Key of a packaged network's int8 OpenVINO IR (``network.xml`` beside its ``.bin``)."""


# int8: the quantized layers run in int8 whatever the hint; the others stay in f32, as when
# the agreement was measured.
_OPENVINO_PRECISION = {Precision.FP32: "f32", Precision.BF16: "bf16", Precision.INT8: "f32"}


def default_cache_dir() -> Path:
    """Folder of exported networks: ``$MEDSEG_CACHE_DIR`` or ``$XDG_CACHE_HOME/medseg/onnx``."""
    if "MEDSEG_CACHE_DIR" in os.environ:
        return Path(os.environ["MEDSEG_CACHE_DIR"]) / "onnx"
    xdg_cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg_cache) / "medseg" / "onnx"


def require_package(module: str, *, purpose: str) -> ModuleType:
    """Import ``module`` or raise a ``MedsegError`` that says which package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"{purpose} needs the Python package {module!r}, which is not "
            f"installed ({error}); install it with `pip install {module}` or {INSTALL_HINT}"
        ) from error


def export_key(network: nn.Module, *, patch_size: Sequence[int], in_channels: int) -> str:
    """Hash identifying an export: architecture, weights, input shape and exporter versions."""
    digest = hashlib.sha256()
    # The module repr carries hyperparameters without weights (e.g. LeakyReLU slopes).
    header = (
        repr(network),
        tuple(int(size) for size in patch_size),
        int(in_channels),
        ONNX_OPSET,
        torch.__version__,
    )
    digest.update(repr(header).encode())
    for name, tensor in sorted(network.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def export_onnx(
    network: nn.Module,
    *,
    patch_size: Sequence[int],
    in_channels: int,
    cache_dir: Path | None = None,
) -> Path:
    """Export ``network`` (eval mode) to ONNX once, or return the cached export.

    The batch axis is dynamic; the channel and spatial axes are fixed to ``in_channels`` and
    ``patch_size``. The network is put in eval mode; a copy of it is exported, because
    ``torch.export`` restores module attributes it saw assigned as new objects, which breaks
    DynUNet's deep-supervision heads list (shared between its layers) for later training.

    Args:
        network: module mapping ``(B, C, *patch)`` to logits (or a list whose first is used).
        patch_size: spatial window size the exported graph accepts.
        in_channels: C.
        cache_dir: folder of exports (default ``default_cache_dir()``).

    Returns:
        Path of the ``.onnx`` file (weights embedded, no external data files).

    Raises:
        MissingDependencyError: ``onnx``/``onnxscript`` missing.
        BackendError: the export failed.
    """
    network.eval()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = export_key(network, patch_size=patch_size, in_channels=in_channels)
    path = cache_dir / f"{type(network).__name__.lower()}-{key}.onnx"
    if path.is_file():
        logger.debug("reusing exported network %s", path)
        return path
    require_package("onnx", purpose="exporting to ONNX")
    require_package("onnxscript", purpose="exporting to ONNX")
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.onnx")
    parameter = next(network.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    # Batch 2, not 1: torch.export specializes axes of size 1 to constants.
    example = torch.zeros((2, in_channels, *patch_size), dtype=torch.float32, device=device)
    started = time.perf_counter()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # DynUNet stores deep-supervision heads in a list attribute even in eval mode;
            # they are unused there and the exporter drops them.
            warnings.filterwarnings("ignore", message=".*assigned during export")
            warnings.filterwarnings("ignore", category=FutureWarning)
            torch.onnx.export(
                _FirstOutput(copy.deepcopy(network)).eval(),
                (example,),
                partial,
                dynamo=True,
                opset_version=ONNX_OPSET,
                input_names=["image"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                external_data=False,
                verbose=False,
            )
        os.replace(partial, path)
    except Exception as error:
        partial.unlink(missing_ok=True)
        raise BackendError(
            f"exporting {type(network).__name__} to {path} failed: {error}"
        ) from error
    logger.info("exported network to %s in %.1f s", path, time.perf_counter() - started)
    return path


class _FirstOutput(nn.Module):
    """Wraps a network so its output is one tensor (first of a list, as the predictor does)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        output = self.network(batch)
        if isinstance(output, list | tuple):
            output = output[0]
        return output


class _ExportedPredictor(nn.Module):
    """Shared input checks and numpy<->torch conversion of the predictors of exported networks
    (ONNX graphs, OpenVINO IR).

    The logits a call returns may live in the engine's own output memory (OpenVINO's), which
    its next call overwrites: use them, or copy them, before calling again (the sliding window
    does)."""

    def __init__(self, *, model_path: Path, patch_size: Sequence[int], in_channels: int) -> None:
        super().__init__()
        self.model_path = model_path
        self.input_shape = (int(in_channels), *(int(size) for size in patch_size))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K, *patch)`` of a batch ``(B, C, *patch)``, on the batch's device."""
        if tuple(batch.shape[1:]) != self.input_shape:
            raise BackendError(
                f"{type(self).__name__} ({self.model_path.name}) takes batches of shape "
                f"(B, {', '.join(map(str, self.input_shape))}); got {tuple(batch.shape)}"
            )
        array = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self._run(array)).to(batch.device)

    def _run(self, array: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class OnnxRuntimePredictor(_ExportedPredictor):
    """Runs an exported network with ONNX Runtime's CPU execution provider."""

    def __init__(
        self,
        *,
        onnx_path: Path,
        patch_size: Sequence[int],
        in_channels: int,
        num_threads: int | None = None,
    ) -> None:
        """Open an inference session; ``num_threads`` defaults to ``torch.get_num_threads()``."""
        super().__init__(model_path=onnx_path, patch_size=patch_size, in_channels=in_channels)
        onnxruntime = require_package("onnxruntime", purpose="backend 'onnxruntime'")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        self.session = onnxruntime.InferenceSession(
            str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name

    def _run(self, array: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: array})[0]


class OpenVinoPredictor(_ExportedPredictor):
    """Runs an exported network (ONNX, or OpenVINO IR such as an int8 one) with OpenVINO on
    the CPU."""

    def __init__(
        self,
        *,
        model_path: Path,
        patch_size: Sequence[int],
        in_channels: int,
        precision: Precision = Precision.FP32,
        num_threads: int | None = None,
    ) -> None:
        """Compile for the CPU with an explicit precision hint (OpenVINO's default is bf16).

        Raises:
            MissingDependencyError: ``openvino`` missing.
            BackendError: bf16 requested on a CPU without bf16 support.
        """
        super().__init__(model_path=model_path, patch_size=patch_size, in_channels=in_channels)
        openvino = require_package("openvino", purpose="backend 'openvino'")
        core = openvino.Core()
        if precision == Precision.BF16:
            capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            if "BF16" not in capabilities:
                raise BackendError(
                    f"precision 'bf16' requested but this CPU supports only {capabilities}"
                )
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": _OPENVINO_PRECISION[precision],
            "INFERENCE_NUM_THREADS": num_threads or torch.get_num_threads(),
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.precision = precision
        self.compiled = core.compile_model(str(model_path), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def _run(self, array: np.ndarray) -> np.ndarray:
        # the logits stay in the request's own output memory (a copy is 400 MB a window at 118
        # classes): valid until the next call, as _ExportedPredictor says
        return self.request.infer({0: array}, share_inputs=True, share_outputs=True)[0]


def make_predictor(
    network: nn.Module,
    *,
    backend: Backend | str,
    patch_size: Sequence[int],
    in_channels: int,
    batch_size: int,
    cache_dir: Path | None = None,
    precision: Precision | str = Precision.FP32,
    exports: Mapping[str, Path] | None = None,
) -> nn.Module:
    """A module usable in place of ``network`` by ``sliding_window_predict``.

    Args:
        network: trained network; put in eval mode.
        backend: engine; TORCH returns ``network`` itself.
        patch_size: sliding-window patch (the exported graph accepts only this size).
        in_channels: image channels C.
        batch_size: windows per call in the sliding window; any batch size works (the batch
            axis of the export is dynamic), this one is only checked.
        cache_dir: folder of ONNX exports (default ``default_cache_dir()``).
        precision: ``"fp32"``; ``"bf16"`` (OpenVINO only; 2-3x faster than its fp32 on a
            CPU with bf16 units, but logits differ by ~0.1, so check argmax agreement for the
            model at hand before using it); ``"int8"`` (OpenVINO only, the quantized network
            of ``exports``).
        exports: the network's exports stored with its package (``EXPORT_ONNX``: the fp32
            ONNX graph at ``patch_size``; ``EXPORT_INT8``: the int8 OpenVINO IR), used instead
            of exporting again.

    Returns:
        Module whose ``forward`` maps ``(B, C, *patch)`` float32 to logits ``(B, K, *patch)``.

    Raises:
        UnknownChoiceError: unknown backend or precision.
        BackendError: ``auto`` (unresolved), bf16 or int8 with another backend than
            OpenVINO, int8 without an int8 export, a batch size below 1, or the export failed.
        MissingDependencyError: the backend package is not installed.
    """
    backend = look_up_option(backend, Backend)
    precision = look_up_option(precision, Precision)
    exports = exports or {}
    if Backend.AUTO in (backend, precision) or precision is Precision.AUTO:
        raise BackendError("'auto' is resolved per model first: medseg.infer.auto.resolve_options")
    if precision != Precision.FP32 and backend != Backend.OPENVINO:
        raise BackendError(f"precision {precision.value!r} is only supported by backend 'openvino'")
    if batch_size < 1:
        raise BackendError(f"batch_size must be at least 1, got {batch_size}")
    network.eval()
    if backend == Backend.TORCH:
        return network
    # Import the runtime before exporting so a missing package fails fast.
    require_package(backend.value, purpose=f"backend {backend.value!r}")
    if precision == Precision.INT8:
        if EXPORT_INT8 not in exports:
            raise BackendError(
                "precision 'int8' runs the quantized network stored with the model, and this "
                "model has none (train it with --int8)"
            )
        model_path = Path(exports[EXPORT_INT8])
    elif EXPORT_ONNX in exports:
        model_path = Path(exports[EXPORT_ONNX])
        logger.debug("running the export stored with the model, %s", model_path.name)
    else:
        model_path = export_onnx(
            network, patch_size=patch_size, in_channels=in_channels, cache_dir=cache_dir
        )
    if backend == Backend.ONNXRUNTIME:
        return OnnxRuntimePredictor(
            onnx_path=model_path, patch_size=patch_size, in_channels=in_channels
        )
    return OpenVinoPredictor(
        model_path=model_path, patch_size=patch_size, in_channels=in_channels, precision=precision
    )
