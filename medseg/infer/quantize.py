"""int8 post-training quantization of an exported network with OpenVINO's NNCF.

Opt-in (``medseg train --int8``): when the trained model is packaged, its fp32 ONNX export is
quantized with NNCF, calibrated on patches drawn from the training cases as training draws
them (foreground oversampled), and written as OpenVINO IR beside the other exports of the
package. Whether prediction may use it is decided by its argmax agreement with fp32 on the
validation cases (``medseg.infer.agreement``), like bf16.

Example:
    >>> quantize_int8(onnx_path, patches, folder / "int8")
    PosixPath('.../int8/network.xml')
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medseg.errors import BackendError
from medseg.infer.backends import require_package

logger = logging.getLogger(__name__)

CALIBRATION_PATCHES = 64
"""Training patches the int8 ranges are calibrated on (NNCF suggests a few hundred images of
a classifier; a segmentation patch holds hundreds of thousands of voxels)."""

INT8_NETWORK = "network.xml"
"""File name of the quantized network in its folder (weights in ``network.bin`` beside it)."""


def require_quantization() -> None:
    """Check, before anything is trained, that int8 quantization can run here.

    Raises:
        MissingDependencyError: ``nncf`` or ``openvino`` (or the ONNX exporter) missing.
    """
    for module in ("nncf", "openvino", "onnx", "onnxscript"):
        require_package(module, purpose="int8 quantization (--int8)")


def quantize_int8(onnx_path: Path, patches: Sequence[np.ndarray], folder: Path) -> Path:
    """Quantize the network exported at ``onnx_path`` to int8, calibrated on ``patches``.

    Args:
        onnx_path: the fp32 ONNX export (``medseg.infer.backends.export_onnx``).
        patches: calibration inputs, each ``(1, C, *patch)`` float32 at the export's size.
        folder: where the OpenVINO IR is written (created).

    Returns:
        The path of ``INT8_NETWORK`` in ``folder``.

    Raises:
        MissingDependencyError: ``nncf`` or ``openvino`` missing.
        BackendError: no patch, or NNCF failed (names the export).
    """
    if not patches:
        raise BackendError(f"quantizing {onnx_path.name} to int8 needs calibration patches")
    nncf = require_package("nncf", purpose="int8 quantization (--int8)")
    openvino = require_package("openvino", purpose="int8 quantization (--int8)")
    started = time.perf_counter()
    try:
        quantized = nncf.quantize(
            openvino.Core().read_model(str(onnx_path)),
            nncf.Dataset([np.ascontiguousarray(p, dtype=np.float32) for p in patches]),
            # activations after normalisation are signed: asymmetric ranges for them
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(patches),
        )
    except Exception as error:  # NNCF raises its own and third-party types
        raise BackendError(f"quantizing {onnx_path.name} to int8 failed: {error}") from error
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / INT8_NETWORK
    openvino.save_model(quantized, str(path), compress_to_fp16=False)
    logger.info(
        "quantized the network to int8 on %d training patches in %.1f s",
        len(patches),
        time.perf_counter() - started,
    )
    return path
