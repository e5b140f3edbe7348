"""How closely a reduced precision reproduces fp32: the argmax agreement measured at export.

When a trained model is packaged (``medseg train``), each reduced precision this machine can
run (bf16 with OpenVINO on a CPU with bf16 units) runs the same sliding window as fp32 torch on
a few validation cases; the fraction of voxels whose label is the same is stored with the
model (``precision_agreement`` in its ``MLmodel`` metadata) and logged to MLflow. At predict
time ``medseg.infer.auto`` uses a reduced precision only when that fraction is at least 99.9%.

Example:
    >>> measure_precision_agreement(
    ...     network, [case.image for case in validation_cases], patch_size=(32, 32, 32),
    ...     num_classes=6,
    ... )
    {'bf16': 0.99971}
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medseg.infer.auto import cpu_supports_bf16, fastest_backend
from medseg.infer.backends import make_predictor
from medseg.infer.choices import Backend, Precision
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


def measure_precision_agreement(
    network: nn.Module,
    images: Sequence[np.ndarray],
    *,
    patch_size: Sequence[int],
    num_classes: int,
    overlap: float = 0.5,
    slice_axis: int | None = None,
    activation: str = "softmax",
    precisions: Sequence[Precision] | None = None,
) -> dict[str, float]:
    """Argmax agreement with fp32 torch of each reduced precision, on ``images``.

    Args:
        network: the trained network (CPU, put in eval mode).
        images: preprocessed images ``(C, X, Y, Z)``; the first ``AGREEMENT_CASES`` are used.
        patch_size: the sliding window's patch; ``overlap``, ``slice_axis`` (2D networks) and
            ``activation`` as in ``predict_probabilities``.
        num_classes: outputs of the network.
        precisions: what to measure (default ``measurable_precisions()``).

    Returns:
        ``{precision: fraction of voxels with the fp32 label}``, pooled over the images;
        empty when there is no image or nothing to measure.

    Raises:
        BackendError: the export failed.
    """
    precisions = measurable_precisions() if precisions is None else list(precisions)
    images = list(images)[:AGREEMENT_CASES]
    if not precisions or not images:
        return {}
    network.eval()
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
    with tempfile.TemporaryDirectory(prefix="medseg-agreement-") as cache_dir:
        for precision in precisions:
            predictor = make_predictor(
                network,
                backend=Backend.OPENVINO,
                precision=precision,
                patch_size=patch_size,
                in_channels=int(images[0].shape[0]),
                batch_size=2,
                cache_dir=Path(cache_dir),
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
