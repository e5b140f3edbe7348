"""``--backend auto`` and ``--precision auto``: the engine installed for this machine, and bf16
only for a model whose argmax agreement with fp32 was measured at export and is >= 99.9%."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medseg.cli import app
from medseg.errors import PrecisionRefusedError
from medseg.infer import auto
from medseg.infer.auto import cpu_supports_bf16, fastest_backend, resolve_options
from medseg.infer.choices import Backend, Precision
from medseg.infer.options import PredictionOptions
from tests.packaged_model import build_packaged_model
from tests.phantoms import write_phantom_nifti
from tests.tiny_dataset import TinyDataset

pytest.importorskip("openvino", reason="the resolution on this machine needs openvino")
BF16 = pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no bf16 units")


@pytest.fixture
def fresh_probe() -> Iterator[None]:
    """The backend probe forgets what it found, before and after the test."""
    auto._probe_backend.cache_clear()
    yield
    auto._probe_backend.cache_clear()


def test_auto_is_openvino_on_this_cpu() -> None:
    resolved = resolve_options(PredictionOptions(), agreement={}, model="m")
    assert fastest_backend() is Backend.OPENVINO
    assert (resolved.backend, resolved.precision) == (Backend.OPENVINO, Precision.FP32)


@pytest.mark.parametrize(
    ("missing", "expected"),
    [
        ({"openvino"}, Backend.ONNXRUNTIME),
        ({"openvino", "onnxruntime"}, Backend.TORCH),
    ],
)
def test_auto_falls_back_when_a_runtime_is_not_installed(
    missing: set[str], expected: Backend, fresh_probe: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = auto._installed
    monkeypatch.setattr(
        auto, "_installed", lambda module: module not in missing and installed(module)
    )
    resolved = resolve_options(PredictionOptions(), agreement={"bf16": 0.9999}, model="m")
    assert (resolved.backend, resolved.precision) == (expected, Precision.FP32)


@BF16
@pytest.mark.parametrize(
    ("agreement", "precision", "logged"),
    [
        ({"bf16": 0.9997}, Precision.BF16, "backend auto: openvino bf16 (agreement 99.97%"),
        ({"bf16": 0.999}, Precision.BF16, "backend auto: openvino bf16 (agreement 99.90%"),
        ({"bf16": 0.9985}, Precision.FP32, "openvino fp32 (bf16 not used: the argmax agreement"),
        ({}, Precision.FP32, "openvino fp32 (bf16 not used: no argmax agreement of bf16"),
    ],
)
def test_auto_picks_bf16_only_with_a_stored_agreement_of_at_least_999(
    agreement: dict[str, float],
    precision: Precision,
    logged: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="medseg.infer.auto"):
        resolved = resolve_options(PredictionOptions(), agreement=agreement, model="m")
    assert resolved.precision is precision
    assert [logged in record.getMessage() for record in caplog.records] == [True]


@pytest.mark.parametrize(
    ("precision", "agreement", "problem"),
    [
        ("bf16", {"bf16": 0.9985}, "measured at export is 99.85%, below 99.90%"),
        ("bf16", {}, "no argmax agreement of bf16 with fp32 was measured at export"),
        ("int8", {"int8": 0.997, "bf16": 1.0}, "of int8 with fp32 measured at export is 99.70%"),
        ("int8", {"bf16": 1.0}, "no argmax agreement of int8 .* model trained with --int8"),
    ],
)
def test_explicit_reduced_precision_without_enough_agreement_is_refused(
    precision: str, agreement: dict[str, float], problem: str
) -> None:
    options = PredictionOptions(backend="openvino", precision=precision)
    with pytest.raises(PrecisionRefusedError, match=problem) as refused:
        resolve_options(options, agreement=agreement, model="models:/liver/3")
    assert refused.value.where == "models:/liver/3"


def test_explicit_options_are_kept_as_given(caplog: pytest.LogCaptureFixture) -> None:
    options = PredictionOptions(backend="openvino", precision="bf16")
    with caplog.at_level(logging.INFO, logger="medseg.infer.auto"):
        assert resolve_options(options, agreement={"bf16": 0.9995}, model="m") == options
    assert not caplog.records


def test_predict_with_bf16_for_a_model_without_agreement_exits_2(
    tiny_dataset: TinyDataset, tmp_path: Path
) -> None:
    model_uri, tracking_uri = build_packaged_model(tiny_dataset.plan, tmp_path / "mlflow")
    write_phantom_nifti(tmp_path / "scan.nii.gz", seed=3)
    result = CliRunner().invoke(
        app,
        [
            "predict", str(tmp_path / "scan.nii.gz"), "--model", model_uri,
            "--out", str(tmp_path / "out"), "--tracking-uri", tracking_uri,
            "--precision", "bf16",
        ],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert f"error: {model_uri}: precision bf16 refused: no argmax agreement" in result.output
    assert not (tmp_path / "out" / "scan.nii.gz").exists()
