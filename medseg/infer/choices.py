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

    bf16 and int8 run with OpenVINO only, and only for a model whose argmax agreement with
    fp32 was measured at export (``medseg.infer.agreement``); int8 needs the quantized network
    stored with the model (``medseg train --int8``). AUTO: bf16 where that is allowed and the
    CPU has bf16 units, else fp32 (never int8, which is opt-in).
    """

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    INT8 = "int8"


def runs_on(precision: Precision, backend: Backend) -> bool:
    """Whether ``backend`` offers ``precision`` (bf16 and int8 are OpenVINO's; auto may pick
    OpenVINO, so it is not refused before being resolved)."""
    if precision in (Precision.BF16, Precision.INT8):
        return backend in (Backend.OPENVINO, Backend.AUTO)
    return True
