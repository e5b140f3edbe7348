"""Whole scans through a registered model's pyfunc: ``mlflow models serve`` and
``mlflow.pyfunc.load_model(...).predict``, with the code path of ``medseg predict``.

A registered medseg model answers two kinds of request (``POST /invocations`` bodies):

* **scans**: one row per scan, ``{"dataframe_records": [{"nifti_base64": "<a .nii or .nii.gz
  file, base64>"}, {"path": "/shared/scans/case_007.nii.gz"}], "params": {"structures":
  "liver,spleen"}}``. ``path`` is a file or a DICOM folder on storage the server reads.
  Each scan goes through ``medseg.infer.stage.predict_path`` (DICOM SEG left out) and the
  answer has one row per scan found: ``row`` (the request row), ``case`` (the anonymous case id
  ``medseg predict`` gives it), ``ok``, ``reason`` (why it failed), ``labels_nifti_base64`` (the
  label map in the scan's geometry, gzipped NIfTI) and ``volumes`` (``<case>.volumes.json``).
  ``params`` are ``SCAN_PARAMS`` (``medseg predict``'s options of the same names).
* **tensors**: ``{"inputs": <(B, C, *spatial) array>}``, a preprocessed batch; the answer is
  the softmax (one sigmoid per region for a region-based plan), as before.

The package's signature therefore declares the ``params`` only; the tensor shapes are in the
``MLmodel`` metadata under ``SERVING_METADATA``.
"""

from __future__ import annotations

import base64
import binascii
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd  # type: ignore[import-untyped]
from mlflow.models import ModelSignature
from mlflow.types import ParamSchema, ParamSpec
from pydantic import ValidationError

from medseg.errors import ConfigError, MedsegError
from medseg.infer.options import PredictionOptions
from medseg.infer.outputs import ScanOutputs
from medseg.infer.predictor import PackagedModel

if TYPE_CHECKING:
    from medseg.infer.stage import ScanOutcome

SCAN_COLUMNS = ("nifti_base64", "path")
ANSWER_COLUMNS = ["row", "case", "ok", "reason", "labels_nifti_base64", "volumes"]
SERVING_METADATA = "medseg_serving"
# name -> (MLflow param type, default); each is PredictionOptions' field of the same name
SCAN_PARAMS: dict[str, tuple[str, Any]] = {
    "structures": ("string", ""),  # comma-separated names or label values; "": all
    "fast": ("boolean", False),
    "mirror": ("boolean", False),
    "overlap": ("double", 0.5),
    "backend": ("string", "auto"),
    "precision": ("string", "auto"),
}


def serving_signature() -> ModelSignature:
    """The params of a scan request (a tensor request takes none)."""
    return ModelSignature(
        params=ParamSchema(
            [ParamSpec(name, kind, default) for name, (kind, default) in SCAN_PARAMS.items()]
        )
    )


def serving_metadata(*, in_channels: int, num_classes: int, spatial_dims: int) -> dict[str, Any]:
    """What the signature cannot say: the tensor request's shapes (-1: any size)."""
    spatial = [-1] * spatial_dims
    return {
        SERVING_METADATA: {
            "request_formats": ["scans", "tensors"],
            "in_channels": in_channels,
            "tensor_input": [-1, in_channels, *spatial],
            "tensor_output": [-1, num_classes, *spatial],
        }
    }


def scan_records(model_input: Any) -> list[dict[str, Any]] | None:
    """The rows of a scan request, or None for a tensor request."""
    if isinstance(model_input, pd.DataFrame):
        if not set(SCAN_COLUMNS) & set(model_input.columns):
            return None
        return model_input.to_dict(orient="records")
    if isinstance(model_input, Mapping) and set(SCAN_COLUMNS) & set(model_input):
        return pd.DataFrame(dict(model_input)).to_dict(orient="records")
    if isinstance(model_input, Sequence) and model_input and isinstance(model_input[0], Mapping):
        return [dict(row) for row in model_input]
    return None


def request_options(params: Mapping[str, Any] | None) -> PredictionOptions:
    """``PredictionOptions`` from a scan request's ``params``.

    Raises:
        ConfigError: an unknown param or a value the option refuses.
    """
    given = dict(params or {})
    unknown = sorted(set(given) - set(SCAN_PARAMS))
    if unknown:
        raise ConfigError(f"params: unknown {unknown}; known: {sorted(SCAN_PARAMS)}")
    structures = str(given.pop("structures", "") or "")
    if structures:
        given["structures"] = [name.strip() for name in structures.split(",") if name.strip()]
    try:
        return PredictionOptions.model_validate(given)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"params: {problems}") from error


def predict_scans(
    model: PackagedModel, records: list[dict[str, Any]], params: Mapping[str, Any] | None
) -> pd.DataFrame:
    """Answer a scan request: one row per scan found (see the module doc).

    Raises:
        ConfigError: bad params, or a row with neither ``nifti_base64`` nor ``path``.
    """
    from medseg.infer.stage import predict_path

    options = request_options(params)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="medseg-serve-") as folder:
        scans = [_scan_of(record, number, Path(folder)) for number, record in enumerate(records)]
        for number, scan in enumerate(scans):
            out = Path(folder) / f"out_{number}"
            try:
                report = predict_path(
                    scan, model, out_dir=out, options=options, outputs=ScanOutputs(dicom_seg=False)
                )
            except MedsegError as error:  # e.g. no such path: this row fails, the others go on
                rows.append(_failed(number, str(error)))
                continue
            rows += [_answer(number, outcome, out) for outcome in report.outcomes]
    return pd.DataFrame(rows, columns=ANSWER_COLUMNS)


def _scan_of(record: Mapping[str, Any], number: int, folder: Path) -> Path:
    encoded, path = record.get("nifti_base64"), record.get("path")
    if isinstance(encoded, str) and encoded:
        try:
            data = base64.b64decode(encoded, validate=True)
        except binascii.Error as error:
            raise ConfigError(f"row {number}: nifti_base64 is not base64: {error}") from error
        suffix = ".nii.gz" if data[:2] == b"\x1f\x8b" else ".nii"
        scan = folder / f"scan_{number}{suffix}"
        scan.write_bytes(data)
        return scan
    if isinstance(path, str) and path:
        return Path(path)
    raise ConfigError(f"row {number}: give nifti_base64 (a NIfTI file, base64) or path")


def _failed(number: int, reason: str) -> dict[str, Any]:
    return dict.fromkeys(ANSWER_COLUMNS) | {"row": number, "ok": False, "reason": reason}


def _answer(number: int, outcome: ScanOutcome, out: Path) -> dict[str, Any]:
    """The answer row of one scan: its label map (``<case>.nii.gz``) and volumes when done."""
    labels, volumes = out / f"{outcome.case_id}.nii.gz", out / f"{outcome.case_id}.volumes.json"
    return {
        "row": number,
        "case": outcome.case_id,
        "ok": outcome.ok,
        "reason": outcome.reason or "",
        "labels_nifti_base64": (
            base64.b64encode(labels.read_bytes()).decode() if outcome.ok else None
        ),
        "volumes": json.loads(volumes.read_text()) if outcome.ok else None,
    }
