"""``--backend auto`` and ``--precision auto``: the fastest engine installed for this device,
at the lowest precision the model was shown to tolerate.

The engine: CUDA torch when a GPU is present, else OpenVINO when installed on an x86 CPU
(its CPU plugin runs on Intel and AMD alike; on the AMD EPYC this project is benchmarked on it
runs the sliding window 2.0x faster than torch and ONNX Runtime: 1.43 s vs 2.83 s and 2.85 s,
``bench/sliding_window.py``), else ONNX Runtime, else torch. The precision: bf16 when the
engine is OpenVINO, the CPU has bf16 units and the model carries an argmax agreement of bf16
with fp32 of at least ``MIN_AGREEMENT``, measured on its validation cases when it was packaged
(``medseg.infer.agreement``); else fp32. int8 is never chosen by ``auto``: it is asked for by
name (``--precision int8``) for a model quantized at training (``--int8``). A reduced precision
asked for by name is refused for a model without such an agreement, never silently used.

Resolution happens once per command (``resolve_options``) and is logged in one line, e.g.
``backend auto: openvino bf16 (agreement 99.97% measured at export)``; what is resolved is
what is recorded (batch MLflow params).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import platform
from collections.abc import Mapping

from medseg.errors import PrecisionRefusedError
from medseg.infer.choices import Backend, Precision
from medseg.infer.options import PredictionOptions

logger = logging.getLogger(__name__)

MIN_AGREEMENT = 0.999
"""Lowest argmax agreement with fp32 (fraction of voxels) at which a reduced precision is used."""

_X86 = {"x86_64", "amd64", "i386", "i686"}


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


@functools.cache
def _probe_backend() -> tuple[Backend, str]:
    """The engine ``auto`` stands for and why (probed once per process)."""
    if _installed("torch"):
        import torch

        if torch.cuda.is_available():
            return Backend.TORCH, "CUDA GPU"
    x86 = platform.machine().lower() in _X86
    if _installed("openvino") and x86:
        return Backend.OPENVINO, ""
    missing = "OpenVINO not installed" if x86 else f"OpenVINO not used on {platform.machine()}"
    if _installed("onnxruntime"):
        return Backend.ONNXRUNTIME, missing
    return Backend.TORCH, f"{missing}, nor ONNX Runtime"


def fastest_backend() -> Backend:
    """The engine ``auto`` stands for on this machine."""
    return _probe_backend()[0]


@functools.cache
def cpu_supports_bf16() -> bool:
    """Whether OpenVINO's CPU plugin offers bf16 here (AVX512-BF16 or AMX units)."""
    if not _installed("openvino"):
        return False
    core = importlib.import_module("openvino").Core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


def _refusal(precision: Precision, agreement: Mapping[str, float]) -> str | None:
    """Why the model's stored agreement forbids ``precision`` (None: it allows it)."""
    measured = agreement.get(precision.value)
    if measured is None:
        hint = (
            " (int8 needs a model trained with --int8 and a validation split)"
            if precision is Precision.INT8
            else ""
        )
        return f"no argmax agreement of {precision.value} with fp32 was measured at export{hint}"
    if measured < MIN_AGREEMENT:
        return (
            f"the argmax agreement of {precision.value} with fp32 measured at export is "
            f"{_percent(measured)}, below {_percent(MIN_AGREEMENT)}"
        )
    return None


def _auto_precision(backend: Backend, agreement: Mapping[str, float]) -> tuple[Precision, str]:
    """``--precision auto``: the precision and why (empty: nothing to say)."""
    if backend is not Backend.OPENVINO:
        return Precision.FP32, ""
    if not cpu_supports_bf16():
        return Precision.FP32, "this CPU has no bf16 units"
    refusal = _refusal(Precision.BF16, agreement)
    if refusal is not None:
        return Precision.FP32, f"bf16 not used: {refusal}"
    return Precision.BF16, f"agreement {_percent(agreement['bf16'])} measured at export"


def resolve_options(
    options: PredictionOptions, *, agreement: Mapping[str, float], model: str
) -> PredictionOptions:
    """``options`` with ``auto`` backend and precision replaced by what they stand for here.

    Args:
        options: the prediction options as asked for.
        agreement: the model's stored argmax agreement with fp32 per reduced precision
            (``{"bf16": 0.9997}``; empty when none was measured).
        model: the model's URI or folder, named in errors.

    Returns:
        The options with a concrete backend and precision (unchanged when both were given).

    Raises:
        PrecisionRefusedError: bf16 asked for by name for a model whose agreement is below
            ``MIN_AGREEMENT`` or was not measured, or with ``auto`` resolving to an engine other
            than OpenVINO.
    """
    backend, backend_why = options.backend, ""
    if backend is Backend.AUTO:
        backend, backend_why = _probe_backend()
    precision, precision_why = options.precision, ""
    if precision is Precision.AUTO:
        precision, precision_why = _auto_precision(backend, agreement)
    elif precision is not Precision.FP32:
        if backend is not Backend.OPENVINO:
            raise PrecisionRefusedError(
                model, f"precision {precision.value} needs openvino; backend auto is {backend}"
            )
        if (refusal := _refusal(precision, agreement)) is not None:
            raise PrecisionRefusedError(
                model, f"precision {precision.value} refused: {refusal} (use --precision fp32)"
            )
    resolved = options.model_copy(update={"backend": backend, "precision": precision})
    if resolved != options:
        what = "backend" if options.backend is Backend.AUTO else "precision"
        reasons = "; ".join(reason for reason in (backend_why, precision_why) if reason)
        details = f" ({reasons})" if reasons else ""
        logger.info("%s auto: %s %s%s", what, backend.value, precision.value, details)
    return resolved
