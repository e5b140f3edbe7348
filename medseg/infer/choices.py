"""Named choices of inference (the engine and its precision), importable without torch.

The command line offers them as the choices of ``--backend`` and ``--precision``;
``medseg.infer.backends`` implements them.
"""

from __future__ import annotations

from enum import StrEnum


class Backend(StrEnum):
    """Engine that runs the network's forward pass."""

    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"


class Precision(StrEnum):
    """Arithmetic precision of inference; bf16 only with OpenVINO on a CPU that supports it."""

    FP32 = "fp32"
    BF16 = "bf16"
