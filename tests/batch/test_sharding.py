"""Shards: ``I/N`` parsing, scheduler environments, and a stable, disjoint, covering split."""

from __future__ import annotations

import pytest

from medseg.batch.sharding import (
    Shard,
    ShardError,
    resolve_shard,
    shard_from_environment,
    shard_of,
)

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
