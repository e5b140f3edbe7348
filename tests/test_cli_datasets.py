"""``medseg import-dataset`` and ``medseg validate-manifest`` from the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from medseg.cli import app
from medseg.manifest import read_label_names, read_manifest


def test_hippocampus_imports_214_pairs_and_names_the_three_orphans(
    shared_data: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "hippocampus.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "import-dataset",
            str(shared_data / "msd_hippocampus"),
            "--out",
            str(manifest),
            "--modality",
            "MR",
            "--label-names",
            "1=anterior,2=posterior",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "214 cases" in result.output and "171 train, 43 val" in result.output
    for orphan in ("hippocampus_010", "hippocampus_118", "hippocampus_281"):
        assert orphan in result.output
    records = read_manifest(manifest)
    assert len(records) == 214 and {r.modality for r in records} == {"MR"}
    assert read_label_names(manifest) == {0: "background", 1: "anterior", 2: "posterior"}


def test_committed_hippocampus_manifest_is_valid_against_the_shared_data(shared_data: Path) -> None:
    manifest = Path(__file__).parents[1] / "data_manifests/msd_hippocampus.jsonl"
    result = CliRunner().invoke(
        app, ["validate-manifest", str(manifest), "--data-root", str(shared_data)]
    )
    assert result.exit_code == 0, result.output
    assert "214 cases, all valid" in result.output


def test_validate_manifest_reports_a_changed_file_and_exits_1(
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
    assert "hippocampus_001" in result.output and "1 of 214 cases have problems" in result.output
    assert json.loads(manifest.read_text().splitlines()[0])["case_id"] == "hippocampus_001"
