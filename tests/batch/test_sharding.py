"""Shards: ``I/N`` parsing, scheduler environments, a stable, disjoint, covering split; and
three shards into one OUT_DIR, each told its share differently, do every scan once."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medseg.batch.sharding import Shard, resolve_shard, shard_from_environment, shard_of
from medseg.cli import app
from medseg.errors import ShardError
from tests.batch.conftest import BatchModel, batch_command
from tests.batch.trees import PHANTOM_SEEDS, ScanTree

KEYS = [f"nifti:inbox/patient_{i:02d}/t1.nii.gz" for i in range(25)] + [
    f"dicom:1.2.826.0.1.3680043.8.498.{1000 + i}" for i in range(25)
]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3", "I/N"),
        ("a/b", "I/N"),
        ("1/2/3", "I/N"),
        ("", "I/N"),
        ("3/3", "0..2"),
        ("-1/3", "0..2"),
        ("0/0", "at least 1"),
    ],
)
def test_invalid_shards_are_refused_with_the_rule(text: str, message: str) -> None:
    with pytest.raises(ShardError, match=message):
        Shard.parse(text)


def test_a_shard_parses_and_prints_as_i_over_n() -> None:
    assert Shard.parse(" 2/5 ") == Shard(2, 5)
    assert str(Shard(2, 5)) == "2/5"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, Shard(0, 1)),
        ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}, Shard(3, 4)),
        (  # --array=1-4
            {
                "SLURM_ARRAY_TASK_ID": "1",
                "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_ARRAY_TASK_COUNT": "4",
            },
            Shard(0, 4),
        ),
        (  # --array=10-16:2 -> tasks 10, 12, 14, 16
            {
                "SLURM_ARRAY_TASK_ID": "14",
                "SLURM_ARRAY_TASK_MIN": "10",
                "SLURM_ARRAY_TASK_STEP": "2",
                "SLURM_ARRAY_TASK_COUNT": "4",
            },
            Shard(2, 4),
        ),
        ({"JOB_COMPLETION_INDEX": "2", "MEDSEG_SHARD_COUNT": "5"}, Shard(2, 5)),
        ({"JOB_COMPLETION_INDEX": "0", "MEDSEG_SHARD_COUNT": "1"}, Shard(0, 1)),
    ],
)
def test_the_scheduler_environment_gives_the_default_shard(
    env: dict[str, str], expected: Shard
) -> None:
    assert shard_from_environment(env) == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SLURM_ARRAY_TASK_ID": "3"}, "SLURM_ARRAY_TASK_COUNT is not set"),
        ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4"}, "Slurm array.*0..3"),
        ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "4"}, "not an integer"),
        ({"JOB_COMPLETION_INDEX": "1"}, "MEDSEG_SHARD_COUNT"),
        ({"JOB_COMPLETION_INDEX": "4", "MEDSEG_SHARD_COUNT": "4"}, "Indexed Job.*0..3"),
    ],
)
def test_an_inconsistent_environment_is_an_error_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ShardError, match=message):
        shard_from_environment(env)


def test_an_explicit_shard_wins_over_the_environment() -> None:
    env = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2"}
    assert resolve_shard("0/3", env) == Shard(0, 3)
    assert resolve_shard(None, env) == Shard(1, 2)
    assert resolve_shard(None, {}) == Shard(0, 1)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_shards_are_disjoint_and_cover_every_scan(count: int) -> None:
    owned = [{key for key in KEYS if Shard(index, count).owns(key)} for index in range(count)]
    assert sum(len(keys) for keys in owned) == len(KEYS)  # disjoint ...
    assert set().union(*owned) == set(KEYS)  # ... and covering
    if count > 1:
        assert all(keys for keys in owned)  # 50 keys: no shard is left empty


def test_new_scans_do_not_move_the_others() -> None:
    before = {key: shard_of(key, 4) for key in KEYS}
    arrived = [*KEYS[:10], "nifti:inbox/new_arrival.nii.gz", *KEYS[10:], "dicom:9.9.9"]
    after = {key: shard_of(key, 4) for key in arrived}
    assert all(after[key] == shard for key, shard in before.items())
    # Pinned: a change of the assignment would move scans between the shards of an array
    # whose tasks run different medseg versions.
    assert shard_of("dicom:9.9.9", 4) == 0 and shard_of("dicom:9.9.9", 7) == 5


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
