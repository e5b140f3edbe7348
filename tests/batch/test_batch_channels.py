"""``medseg batch`` with a two-channel model over a folder in the nnU-Net layout: the channel
files of a case are one scan (one shard key, one case id, one record), a case missing a
channel fails alone; single-channel scans keep the shard keys they had."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medseg.batch.runner import BatchSettings, run_batch
from medseg.batch.scans import take_inventory
from medseg.batch.sharding import shard_of
from medseg.cli import app
from medseg.datasets import import_dataset
from medseg.ingest.case_ids import CaseIdScheme
from medseg.io.formats import read_volume
from medseg.phi import hash_identifier
from medseg.preprocess.config import PlanOptions
from medseg.preprocess.plan import plan_manifest
from tests.batch.conftest import BatchModel, batch_command
from tests.batch.trees import ScanTree
from tests.packaged_model import log_tiny_unet
from tests.phantoms import write_two_channel_dataset


@pytest.fixture(scope="module")
def two_channel_model(tmp_path_factory: pytest.TempPathFactory) -> BatchModel:
    """An untrained two-channel U-Net on the plan of two-channel phantoms, registered as
    ``models:/twoch/1`` in a SQLite store."""
    root = tmp_path_factory.mktemp("twoch_model")
    write_two_channel_dataset(root / "data", range(2))
    manifest = root / "twoch.jsonl"
    import_dataset(root / "data", manifest_path=manifest, val_fraction=0.0)
    plan = plan_manifest(manifest, options=PlanOptions(patch_size_3d=(32, 32, 32)))
    tracking = f"sqlite:///{root}/mlflow.db"
    logged = log_tiny_unet(plan, tracking, registered_model_name="twoch", in_channels=2)
    assert logged.info.registered_model_version == 1
    return BatchModel("models:/twoch/1", tracking, root)


def _nnunet_folder(root: Path) -> Path:
    """``scans/``: cases twoch_000 and twoch_001 with both channels, twoch_002 with only
    ``_0000``."""
    write_two_channel_dataset(root / "data", range(3))
    scans = root / "scans"
    shutil.copytree(root / "data" / "imagesTr", scans)
    (scans / "twoch_002_0001.nii.gz").unlink()
    return scans


def test_a_two_channel_batch_makes_one_scan_of_each_case_and_fails_the_incomplete_one(
    two_channel_model: BatchModel, tmp_path: Path
) -> None:
    scans, out = _nnunet_folder(tmp_path), tmp_path / "out"
    result = CliRunner().invoke(app, batch_command(scans, two_channel_model, out))
    assert result.exit_code == 1, result.output
    assert "2 done" in result.output and "1 failed" in result.output
    cases = ("twoch_000", "twoch_001", "twoch_002")
    ids = {case: f"nifti_{hash_identifier(f'{case}.nii.gz')}" for case in cases}
    for case in ("twoch_000", "twoch_001"):
        folder = out / ids[case]
        record = json.loads((folder / "result.json").read_text())
        assert record["status"] == "done" and record["model"] == "models:/twoch/1"
        labels = read_volume(folder / f"{ids[case]}.nii.gz")
        channel = read_volume(scans / f"{case}_0000.nii.gz").to_closest_ras()
        assert labels.shape == (32, 32, 32) and labels.same_grid(channel)
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [(f["case_id"], f["error_type"], f["reason"]) for f in failures] == [
        (
            ids["twoch_002"],
            "ChannelsError",
            f"{ids['twoch_002']}: channel files _0000: the model takes 2 channels (missing _0001)",
        )
    ]
    rows = {row["case_id"]: row["status"] for row in csv.DictReader((out / "summary.csv").open())}
    assert rows == {ids["twoch_000"]: "done", ids["twoch_001"]: "done", ids["twoch_002"]: "failed"}

    # a rerun skips the complete cases; the incomplete one fails again, alone
    again = run_batch(
        scans,
        two_channel_model.uri,
        out,
        settings=BatchSettings(tracking_uri=two_channel_model.tracking_uri),
    )
    assert sorted(again.skipped) == sorted([ids["twoch_000"], ids["twoch_001"]])
    assert again.done == [] and [f.case_id for f in again.failed] == [ids["twoch_002"]]

    # its second channel arrives: the case is done, under the same case id
    shutil.copy(tmp_path / "data" / "imagesTr" / "twoch_002_0001.nii.gz", scans)
    completed = run_batch(
        scans,
        two_channel_model.uri,
        out,
        settings=BatchSettings(tracking_uri=two_channel_model.tracking_uri),
    )
    assert [r.case_id for r in completed.done] == [ids["twoch_002"]]
    assert not (out / "failures.jsonl").read_text().strip()


def test_channel_files_of_a_case_share_one_shard_key_and_single_channel_keys_stay(
    tmp_path: Path,
) -> None:
    tree = ScanTree(tmp_path / "scans")
    tree.nifti("inbox/case_0000.nii.gz", 0)  # nnU-Net names, one case of two channels
    tree.nifti("inbox/case_0001.nii.gz", 0)
    tree.nifti("inbox/other_0000.nii.gz", 2)  # channel 1 not there yet
    tree.nifti("ct.nii.gz", 3)
    tree.dicom("dicom/A", 4)
    single = take_inventory(tree.root, case_ids=CaseIdScheme.HASH)
    uid = next(scan.key for scan in single.scans if scan.key.startswith("dicom:"))
    # the keys (and so the shards) of a single-channel model are those of before channels
    assert sorted(scan.key for scan in single.scans) == [
        uid,
        "nifti:ct.nii.gz",
        "nifti:inbox/case_0000.nii.gz",
        "nifti:inbox/case_0001.nii.gz",
        "nifti:inbox/other_0000.nii.gz",
    ]
    assert [shard_of(key, 4) for key in ("nifti:ct.nii.gz", "nifti:inbox/case_0000.nii.gz")] == [
        1,
        0,
    ]
    two = take_inventory(tree.root, case_ids=CaseIdScheme.HASH, channels=2)
    by_key = {scan.key: scan for scan in two.scans}
    assert sorted(by_key) == sorted(
        [uid, "nifti:ct.nii.gz", "channels:inbox/case", "channels:inbox/other"]
    )
    case = by_key["channels:inbox/case"]
    assert [path.name for path in case.channel_files] == ["case_0000.nii.gz", "case_0001.nii.gz"]
    assert case.case_id == f"nifti_{hash_identifier('inbox/case.nii.gz')}"
    volume = case.task().read()  # rebuilt as a worker does
    assert volume.shape[3:] == (2,)
    assert by_key["nifti:ct.nii.gz"].task().read().array.ndim == 3
