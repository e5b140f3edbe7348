"""Three shards into one OUT_DIR, each told its share differently, do every scan once."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from typer.testing import CliRunner

from medseg.cli import app
from tests.batch.conftest import BatchModel, batch_command
from tests.batch.trees import PHANTOM_SEEDS, ScanTree

NO_SCHEDULER = {
    "SLURM_ARRAY_TASK_ID": None,
    "SLURM_ARRAY_TASK_MIN": None,
    "SLURM_ARRAY_TASK_COUNT": None,
    "JOB_COMPLETION_INDEX": None,
    "MEDSEG_SHARD_COUNT": None,
}


def test_shards_of_one_batch_do_every_scan_exactly_once(
    batch_model: BatchModel, tmp_path: Path
) -> None:
    tree = ScanTree(tmp_path / "scans")
    cases = [f"phantom_{seed}" for seed in PHANTOM_SEEDS[:6]]
    for seed, case in zip(PHANTOM_SEEDS, cases, strict=False):
        tree.nifti(f"ward/{case}.nii.gz", seed)
    tree.dicom("ward/series_7", PHANTOM_SEEDS[6])
    out = tmp_path / "out"
    command = batch_command(tree.root, batch_model, out, "--case-ids", "folder", "--no-dicom-seg")
    runs = [  # shard 0/3 by flag, 1/3 from a Slurm array --array=1-3, 2/3 from an Indexed Job
        ([*command, "--shard", "0/3"], NO_SCHEDULER),
        (
            command,
            NO_SCHEDULER
            | {
                "SLURM_ARRAY_TASK_ID": "2",
                "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_ARRAY_TASK_COUNT": "3",
            },
        ),
        (command, NO_SCHEDULER | {"JOB_COMPLETION_INDEX": "2", "MEDSEG_SHARD_COUNT": "3"}),
    ]
    done_by_shard: list[set[str]] = []
    complete: set[str] = set()
    for arguments, env in runs:
        result = CliRunner(env=env).invoke(app, arguments)
        assert result.exit_code == 0, result.output
        now = {p.parent.name for p in out.glob("*/result.json")}
        done_by_shard.append(now - complete)
        complete = now
        assert f"{len(done_by_shard[-1])} done" in result.output
    expected = {"ward_series_7", *cases}  # folder ids: folder and file names
    assert complete == expected
    assert sum(len(cases) for cases in done_by_shard) == len(expected)  # disjoint shares
    assert sum(1 for cases in done_by_shard if cases) >= 2  # 7 scans really were split
    rows = list(csv.DictReader((out / "summary.csv").open()))  # by the last shard: complete
    assert sorted(row["case_id"] for row in rows) == sorted(expected)
    assert {row["source"] for row in rows} == {
        *(f"ward/{case}.nii.gz" for case in cases),
        "ward/series_7 series 1",
    }
    # batch-summary rebuilds the same files, e.g. as a final step after a job array
    built = (out / "summary.csv").read_text()
    (out / "summary.csv").unlink()
    assert CliRunner().invoke(app, ["batch-summary", str(out)]).exit_code == 0
    assert (out / "summary.csv").read_text() == built
    record = json.loads((out / "ward_series_7" / "result.json").read_text())
    assert record["source"] == "ward/series_7 series 1"  # --case-ids folder: sources allowed
    assert (out / "failures.jsonl").read_text() == ""


def test_an_invalid_shard_is_a_usage_error_naming_the_rule(tmp_path: Path) -> None:
    (tmp_path / "scans").mkdir()
    arguments = ["batch", str(tmp_path / "scans"), "--model", "m", "--out", str(tmp_path / "o")]
    result = CliRunner(env=NO_SCHEDULER).invoke(app, [*arguments, "--shard", "3/3"])
    assert result.exit_code == 2 and "0..2" in result.output
    result = CliRunner(env=NO_SCHEDULER | {"JOB_COMPLETION_INDEX": "1"}).invoke(app, arguments)
    assert result.exit_code == 2 and "MEDSEG_SHARD_COUNT" in result.output
