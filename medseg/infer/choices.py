"""Named choices of inference (the engine and its precision), importable without torch.

The command line offers them as the choices of ``--backend`` and ``--precision``;
``medseg.infer.auto`` resolves ``auto`` and ``medseg.infer.backends`` implements the rest.
"""

from __future__ import annotations

from enum import StrEnum


class Backend(StrEnum):
    """Engine that runs the network's forward pass; AUTO: the fastest one installed for the
    device (``medseg.infer.auto``)."""

    AUTO = "auto"
    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"


class Precision(StrEnum):
    """Arithmetic precision of inference.

    bf16 runs with OpenVINO only, and only for a model whose argmax agreement with fp32
    was measured at export (``medseg.infer.agreement``); AUTO: bf16 where that is allowed and
    the CPU has bf16 units, else fp32.
    """

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
