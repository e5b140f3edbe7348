"""``medseg import-dataset`` and ``medseg validate-manifest`` from the command line.

On a phantom dataset as found in the wild; the reference tests at the end use the real MSD
hippocampus data and its committed manifest from ../shared/data.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from typer.testing import CliRunner, Result

from medseg.cli import app
from medseg.manifest import read_label_names, read_manifest
from tests.phantoms import (
    WILD_ORPHANS,
    WILD_PAIRS,
    write_phantom_dataset_in_the_wild,
    write_two_channel_dataset,
)


def _text(result: Result) -> str:
    """The command's output with line wrapping undone (the console wraps long paths)."""
    return " ".join(result.output.split())


def _import_names_the_orphans(
    dataset: Path, manifest: Path, *, pairs: int, splits: str, orphans: list[str]
) -> None:
    result = CliRunner().invoke(
        app,
        [
            "import-dataset",
            str(dataset),
            "--out",
            str(manifest),
            "--modality",
            "MR",
            "--label-names",
            "1=anterior,2=posterior",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"{pairs} cases" in _text(result) and splits in _text(result)
    for orphan in orphans:
        assert orphan in result.output
    records = read_manifest(manifest)
    assert len(records) == pairs and {r.modality for r in records} == {"MR"}
    names = read_label_names(manifest)
    assert {value: names[value] for value in (0, 1, 2)} == {
        0: "background",
        1: "anterior",
        2: "posterior",
    }


def test_import_counts_the_pairs_and_names_the_three_orphans(tmp_path: Path) -> None:
    dataset = write_phantom_dataset_in_the_wild(tmp_path / "phantoms")
    _import_names_the_orphans(
        dataset,
        tmp_path / "phantoms.jsonl",
        pairs=WILD_PAIRS,
        splits="8 train, 2 val",
        orphans=[case_id for case_id, _ in WILD_ORPHANS],
    )


def test_import_of_a_two_channel_dataset_names_the_channels_and_a_rejected_case(
    tmp_path: Path,
) -> None:
    write_two_channel_dataset(tmp_path / "twoch", range(3))
    (tmp_path / "twoch" / "imagesTr" / "twoch_001_0001.nii.gz").unlink()
    result = CliRunner().invoke(
        app, ["import-dataset", str(tmp_path / "twoch"), "--out", str(tmp_path / "t.jsonl")]
    )
    assert result.exit_code == 1, result.output
    text = _text(result)
    assert "2 cases (nnunet_v2 layout, modality MR)" in text
    assert "channels: T1, T2 (stacked into 4D cases)" in text
    assert "channel file(s) twoch_001_0001 (T2) missing" in text
    assert [r.shape for r in read_manifest(tmp_path / "t.jsonl")] == [[32, 32, 32, 2]] * 2


def test_validate_manifest_reports_a_changed_file_and_exits_1(tmp_path: Path) -> None:
    data = tmp_path / "data"
    dataset = write_phantom_dataset_in_the_wild(data / "phantoms")
    manifest = tmp_path / "m.jsonl"
    imported = CliRunner().invoke(
        app, ["import-dataset", str(dataset), "--out", str(manifest), "--data-root", str(data)]
    )
    assert imported.exit_code == 0, imported.output
    clean = CliRunner().invoke(app, ["validate-manifest", str(manifest), "--data-root", str(data)])
    assert clean.exit_code == 0, clean.output
    assert f"{WILD_PAIRS} cases, all valid" in _text(clean)
    victim = dataset / "images/phantom_001.nii.gz"
    victim.write_bytes(victim.read_bytes()[:-10])
    result = CliRunner().invoke(app, ["validate-manifest", str(manifest), "--data-root", str(data)])
    assert result.exit_code == 1
    assert "phantom_001" in result.output
    assert f"1 of {WILD_PAIRS} cases have problems" in _text(result)
    assert json.loads(manifest.read_text().splitlines()[0])["case_id"] == "phantom_001"


# --- reference data (../shared/data) ---------------------------------------------------------


def test_hippocampus_imports_214_pairs_and_names_the_three_orphans(
    shared_data: Path, tmp_path: Path
) -> None:
    _import_names_the_orphans(
        shared_data / "msd_hippocampus",
        tmp_path / "hippocampus.jsonl",
        pairs=214,
        splits="171 train, 43 val",
        orphans=["hippocampus_010", "hippocampus_118", "hippocampus_281"],
    )


def test_committed_hippocampus_manifest_is_valid_against_the_shared_data(shared_data: Path) -> None:
    manifest = Path(__file__).parents[1] / "data_manifests/msd_hippocampus.jsonl"
    result = CliRunner().invoke(
        app, ["validate-manifest", str(manifest), "--data-root", str(shared_data)]
    )
    assert result.exit_code == 0, result.output
    assert "214 cases, all valid" in _text(result)


def test_committed_hippocampus_manifest_holds_out_40_test_cases_by_hash_of_the_case_id() -> None:
    """The test split (bench/quality_vs_nnunet.py scores on it) is the 40 cases of the
    imported train split with the lowest SHA-256 of their case id; val is the imported one."""
    records = read_manifest(Path(__file__).parents[1] / "data_manifests/msd_hippocampus.jsonl")
    by_split = {
        split: sorted(r.case_id for r in records if r.split == split)
        for split in ("train", "val", "test")
    }
    assert {split: len(ids) for split, ids in by_split.items()} == {
        "train": 131,
        "val": 43,
        "test": 40,
    }

    def digest(case_id: str) -> str:
        return hashlib.sha256(case_id.encode()).hexdigest()

    assert max(map(digest, by_split["test"])) < min(map(digest, by_split["train"]))
    assert by_split["test"][:3] == ["hippocampus_008", "hippocampus_038", "hippocampus_048"]


def test_hippocampus_copy_with_a_changed_file_fails_validation(
    shared_data: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(shared_data / "msd_hippocampus", data / "msd_hippocampus")
    manifest = tmp_path / "m.jsonl"
    CliRunner().invoke(
        app,
        [
            "import-dataset",
            str(data / "msd_hippocampus"),
            "--out",
            str(manifest),
            "--data-root",
            str(data),
        ],
    )
    victim = data / "msd_hippocampus/images/hippocampus_001.nii.gz"
    victim.write_bytes(victim.read_bytes()[:-10])
    result = CliRunner().invoke(app, ["validate-manifest", str(manifest), "--data-root", str(data)])
    assert result.exit_code == 1
    assert "hippocampus_001" in result.output and "1 of 214 cases have problems" in _text(result)
