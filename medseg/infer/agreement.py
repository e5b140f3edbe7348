"""How closely a reduced precision reproduces fp32: the argmax agreement measured at export.

When a trained model is packaged (``medseg train``), it is exported once (the fp32 ONNX graph,
and with ``--int8`` a quantized OpenVINO network) and each reduced precision this machine can
run (bf16 with OpenVINO on a CPU with bf16 units; int8 when quantized) runs the same sliding
window as fp32 torch on a few validation cases; the fraction of voxels whose label is the same
is stored with the model (``precision_agreement`` in its ``MLmodel`` metadata) and logged to
MLflow, the exports beside its weights. At predict time ``medseg.infer.auto`` uses a reduced
precision only when that fraction is at least 99.9%.

Example:
    >>> exports = export_for_package(
    ...     network, [case.image for case in validation_cases], folder=Path("exports"),
    ...     patch_size=(32, 32, 32), in_channels=1, num_classes=6,
    ... )
    >>> exports.agreement
    {'bf16': 0.99971}
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medseg.infer.auto import cpu_supports_bf16, fastest_backend
from medseg.infer.backends import EXPORT_INT8, EXPORT_ONNX, export_onnx, make_predictor
from medseg.infer.choices import Backend, Precision
from medseg.infer.quantize import quantize_int8, require_quantization
from medseg.infer.sliding_window import predict_probabilities

logger = logging.getLogger(__name__)

AGREEMENT_CASES = 3
"""Validation cases the agreement is measured on (the first ones): a handful is enough for
hundreds of thousands of voxels, and the export must stay seconds."""


def measurable_precisions() -> list[Precision]:
    """The reduced precisions this machine can run, so measure: bf16 where OpenVINO is the
    engine ``auto`` picks and the CPU has bf16 units."""
    if fastest_backend() is Backend.OPENVINO and cpu_supports_bf16():
        return [Precision.BF16]
    return []


def _labels(
    module: nn.Module,
    image: np.ndarray,
    *,
    patch_size: Sequence[int],
    num_classes: int,
    overlap: float,
    slice_axis: int | None,
    activation: str,
) -> np.ndarray:
    """The label map (argmax; for sigmoid outputs each region > 0.5) of one image."""
    tensor = torch.from_numpy(np.array(image, dtype=np.float32))
    with torch.inference_mode():
        probabilities = predict_probabilities(
            module,
            tensor,
            patch_size=patch_size,
            num_classes=num_classes,
            overlap=overlap,
            slice_axis=slice_axis,
            activation=activation,
        ).numpy()
    return probabilities > 0.5 if activation == "sigmoid" else probabilities.argmax(0)


@dataclass(frozen=True)
class PackageExports:
    """What a packaged network carries for the exported backends: the files by key
    (``EXPORT_ONNX``, ``EXPORT_INT8``) and the argmax agreement with fp32 per reduced
    precision (``{"bf16": 0.9997, "int8": 0.9991}``)."""

    files: dict[str, Path] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)


def _can_export() -> bool:
    return all(importlib.util.find_spec(module) for module in ("onnx", "onnxscript"))


def export_for_package(
    network: nn.Module,
    images: Sequence[np.ndarray],
    *,
    folder: Path,
    patch_size: Sequence[int],
    in_channels: int,
    num_classes: int,
    overlap: float = 0.5,
    slice_axis: int | None = None,
    activation: str = "softmax",
    calibration_patches: Sequence[np.ndarray] = (),
) -> PackageExports:
    """Export ``network`` for its package and measure each reduced precision against fp32.

    The fp32 ONNX graph is exported into ``folder`` (when the exporter is installed), so
    prediction with ONNX Runtime or OpenVINO runs it instead of exporting again; with
    ``calibration_patches`` it is also quantized to int8 (``medseg.infer.quantize``). Then
    each reduced precision this machine can run (``measurable_precisions``, and int8 when it
    was quantized) runs the same sliding window as fp32 torch on the first
    ``AGREEMENT_CASES`` of ``images``: the fraction of voxels given the fp32 label.

    Args:
        network: the trained network (CPU, put in eval mode).
        images: preprocessed validation images ``(C, X, Y, Z)`` (none: nothing measured).
        folder: where the exports are written.
        patch_size: the sliding window's patch; ``overlap``, ``slice_axis`` (2D networks) and
            ``activation`` as in ``predict_probabilities``.
        in_channels: input channels C of the network.
        num_classes: outputs of the network.
        calibration_patches: training patches ``(1, C, *patch)`` to quantize on; none: no
            int8.

    Returns:
        The exports and the agreement (empty when there is nothing to export or measure).

    Raises:
        BackendError: the export or the quantization failed.
        MissingDependencyError: int8 asked for without NNCF and OpenVINO.
    """
    network.eval()
    if not _can_export():
        if calibration_patches:
            require_quantization()
        logger.debug("the ONNX exporter is not installed: the model is packaged without exports")
        return PackageExports()
    onnx_path = export_onnx(
        network, patch_size=patch_size, in_channels=in_channels, cache_dir=folder
    )
    files = {EXPORT_ONNX: onnx_path}
    precisions = measurable_precisions()
    if calibration_patches:
        files[EXPORT_INT8] = quantize_int8(onnx_path, calibration_patches, folder / "int8")
        precisions.append(Precision.INT8)
    agreement = measure_precision_agreement(
        network,
        images,
        exports=files,
        patch_size=patch_size,
        num_classes=num_classes,
        overlap=overlap,
        slice_axis=slice_axis,
        activation=activation,
        precisions=precisions,
    )
    return PackageExports(files, agreement)


def measure_precision_agreement(
    network: nn.Module,
    images: Sequence[np.ndarray],
    *,
    exports: Mapping[str, Path],
    patch_size: Sequence[int],
    num_classes: int,
    overlap: float = 0.5,
    slice_axis: int | None = None,
    activation: str = "softmax",
    precisions: Sequence[Precision] = (),
) -> dict[str, float]:
    """Argmax agreement with fp32 torch of each of ``precisions`` run by OpenVINO on
    ``exports``, pooled over the first ``AGREEMENT_CASES`` of ``images``.

    Returns:
        ``{precision: fraction of voxels with the fp32 label}``; empty when there is no image
        or nothing to measure.
    """
    images = list(images)[:AGREEMENT_CASES]
    if not precisions or not images:
        return {}
    labels = functools.partial(
        _labels,
        patch_size=patch_size,
        num_classes=num_classes,
        overlap=overlap,
        slice_axis=slice_axis,
        activation=activation,
    )
    references = [labels(network, image) for image in images]
    agreement = {}
    for precision in precisions:
        predictor = make_predictor(
            network,
            backend=Backend.OPENVINO,
            precision=precision,
            patch_size=patch_size,
            in_channels=int(images[0].shape[0]),
            batch_size=2,
            exports=exports,
        )
        same = sum(
            int(np.count_nonzero(labels(predictor, image) == reference))
            for image, reference in zip(images, references, strict=True)
        )
        agreement[precision.value] = same / sum(reference.size for reference in references)
    logger.info(
        "argmax agreement with fp32 on %d validation cases: %s",
        len(images),
        ", ".join(f"{name} {100 * value:.3f}%" for name, value in agreement.items()),
    )
    return agreement
