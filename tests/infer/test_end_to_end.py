"""Train, register on a real MLflow server, predict by alias, evaluate: validation reproduced."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medseg.cli import app
from medseg.io.nifti import read_nifti
from medseg.manifest import read_manifest
from medseg.preprocess.cache import load_cache
from medseg.train.loop import train
from medseg.train.validation import validate
from tests.mlflow_server import mlflow_server  # noqa: F401
from tests.tiny_dataset import LEARNT_DICE, TinyDataset, learning_config


def test_registered_model_predicts_scans_and_evaluation_matches_validation(
    tiny_dataset: TinyDataset,
    mlflow_server: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    config = learning_config(registered_model_name="phantoms-e2e", experiment="e2e", int8=True)
    trained = train(
        manifest_path=tiny_dataset.manifest,
        plan=tiny_dataset.plan,
        cache_dir=tiny_dataset.cache,
        config=config,
        run_dir=tmp_path / "run",
        tracking_uri=mlflow_server,
    )
    val = [r for r in read_manifest(tiny_dataset.manifest) if r.split == "val"]
    data = tiny_dataset.data
    scans, references = tmp_path / "scans", tmp_path / "references"
    for folder in (scans, references):
        folder.mkdir()
    for record in val:
        shutil.copy(data / "images" / f"{record.case_id}.nii.gz", scans)
        shutil.copy(data / "labels" / f"{record.case_id}.nii.gz", references)
    predicted = CliRunner().invoke(
        app,
        [
            "predict",
            str(scans),
            "--model",
            "models:/phantoms-e2e@champion",
            "--out",
            str(tmp_path / "pred"),
            "--tracking-uri",
            mlflow_server,
            "--case-ids",
            "folder",  # outputs named like the references
            "--backend",  # torch reproduces the training loop's validation exactly
            "torch",
        ],
    )
    assert predicted.exit_code == 0, predicted.output
    _auto_agrees_with_torch(scans, tmp_path, mlflow_server, [r.case_id for r in val])
    _int8_runs_the_quantized_network_or_is_refused(scans, tmp_path, mlflow_server, val)
    for record in val:
        output = read_nifti(tmp_path / "pred" / f"{record.case_id}.nii.gz")
        scan = read_nifti(scans / f"{record.case_id}.nii.gz")
        assert output.same_grid(scan) and output.array.dtype == np.uint8
        volumes = json.loads((tmp_path / "pred" / f"{record.case_id}.volumes.json").read_text())
        names = {n for v, n in tiny_dataset.plan.label_names.items() if v > 0}
        assert set(volumes) == names
        for stats in volumes.values():  # the HU spread inside each structure found
            if stats["voxels"]:
                assert stats["intensity_p5"] <= stats["intensity_median"] <= stats["intensity_p95"]
            else:
                assert stats["intensity_median"] is None
    labels_file = tiny_dataset.manifest.with_suffix(".labels.json")
    evaluated = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(tmp_path / "pred"),
            str(references),
            "--out",
            str(tmp_path / "report"),
            "--labels",
            str(labels_file),
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    summary = json.loads((tmp_path / "report/summary.json").read_text())
    assert (tmp_path / "report/report.html").exists() and (tmp_path / "report/metrics.csv").exists()
    # the validation of the training loop, on the same network and cases, gives the same Dice
    arguments = torch.load(trained.best_checkpoint, weights_only=False)["extra"][
        "network_arguments"
    ]
    from medseg.models import build_network
    from medseg.train.checkpoint import load_checkpoint

    network = build_network(**arguments)
    load_checkpoint(trained.best_checkpoint, network=network)
    configuration = tiny_dataset.plan.configurations["3d"]
    expected = validate(
        network,
        load_cache(tiny_dataset.cache, [r.case_id for r in val]),
        patch_size=configuration.patch_size,
        num_classes=tiny_dataset.num_classes,
        device=torch.device("cpu"),
    )
    names = tiny_dataset.plan.label_names
    assert sorted(summary["structures"]) == sorted(names[v] for v in range(1, len(names)))
    for label, dice in expected.dice.items():
        assert summary["structures"][names[label]]["dice"] == pytest.approx(dice, abs=1e-6)
    for name, threshold in LEARNT_DICE.items():  # learnt, and seen on the held-out phantom
        assert summary["structures"][name]["dice"] >= threshold, summary["structures"][name]


def _auto_agrees_with_torch(scans: Path, tmp_path: Path, tracking_uri: str, cases: list) -> None:
    """The registered model carries the bf16 agreement measured at export, and the default
    backend (auto: OpenVINO here, bf16 when that agreement allows it) labels >= 99.9% of the
    voxels as torch fp32 does."""
    from medseg.infer.auto import cpu_supports_bf16
    from medseg.tracking.packaging import stored_precision_agreement

    uri = "models:/phantoms-e2e@champion"
    agreement = stored_precision_agreement(uri, tracking_uri=tracking_uri)
    if cpu_supports_bf16():
        assert 0.99 <= agreement["bf16"] <= 1.0, agreement
    out = tmp_path / "pred_auto"
    predicted = CliRunner().invoke(
        app,
        ["predict", str(scans), "--model", uri, "--out", str(out), "--tracking-uri",
         tracking_uri, "--case-ids", "folder"],
    )  # fmt: skip
    assert predicted.exit_code == 0, predicted.output
    assert not list(out.glob(".model_cache/*")), "the export stored with the model was not used"
    for case_id in cases:
        auto = read_nifti(out / f"{case_id}.nii.gz").array
        torch_fp32 = read_nifti(tmp_path / "pred" / f"{case_id}.nii.gz").array
        assert (auto == torch_fp32).mean() >= 0.999


def _int8_runs_the_quantized_network_or_is_refused(
    scans: Path, tmp_path: Path, tracking_uri: str, cases: list
) -> None:
    """Trained with ``int8``: the package carries the int8 network and its agreement with
    fp32 on the validation cases; ``--precision int8`` runs it when that agreement is >= 99.9%
    (labels then as torch fp32's on >= 99% of the voxels) and is refused, exit 2, otherwise."""
    from medseg.tracking.packaging import stored_precision_agreement

    uri = "models:/phantoms-e2e@champion"
    agreement = stored_precision_agreement(uri, tracking_uri=tracking_uri)["int8"]
    assert 0.9 <= agreement <= 1.0, agreement
    out = tmp_path / "pred_int8"
    predicted = CliRunner().invoke(
        app,
        ["predict", str(scans), "--model", uri, "--out", str(out), "--tracking-uri",
         tracking_uri, "--case-ids", "folder", "--precision", "int8"],
    )  # fmt: skip
    if agreement < 0.999:
        assert predicted.exit_code == 2, predicted.output
        assert "precision int8 refused: the argmax agreement of int8" in predicted.output
        return
    assert predicted.exit_code == 0, predicted.output
    for record in cases:
        int8 = read_nifti(out / f"{record.case_id}.nii.gz").array
        torch_fp32 = read_nifti(tmp_path / "pred" / f"{record.case_id}.nii.gz").array
        assert (int8 == torch_fp32).mean() >= 0.99
