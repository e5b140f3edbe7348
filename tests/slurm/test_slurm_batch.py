"""The shipped ``deploy/slurm`` scripts on a real Slurm cluster (``tests/slurm_cluster.py``):
``submit.sh`` segments 24 phantom DICOM series (one of them corrupt) as an array of 4 shards
with a model from a real MLflow registry, the summary job runs after the array; a cancelled
task leaves no process and no partial output, and its resubmission finishes the shard without
redoing what was finished."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from mlflow import MlflowClient

from medseg.batch.sharding import shard_of
from tests.batch.trees import ScanTree
from tests.mlflow_server import mlflow_server  # noqa: F401  (session fixture)
from tests.packaged_model import log_tiny_unet
from tests.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401  (session fixture)
from tests.tiny_dataset import TinyDataset

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[2]
SUBMIT = REPOSITORY / "deploy" / "slurm" / "submit.sh"
VENV_BIN = Path(sys.executable).parent
MODEL_NAME = "slurm-phantom"
SERIES = 24
CORRUPT = "series_23"
SHARDS = 4
# the array's per-task resources: this machine's 2 cores as two 1-CPU nodes
ARRAY_OPTIONS = ("--cpus-per-task=1", "--mem=2G")


@dataclass(frozen=True)
class Registered:
    uri: str  # models:/NAME@champion
    tracking_uri: str


@pytest.fixture(scope="module")
def registered(tiny_dataset: TinyDataset, mlflow_server: str) -> Registered:  # noqa: F811
    """The tiny U-Net registered in the real tracking server, alias ``champion``."""
    logged = log_tiny_unet(tiny_dataset.plan, mlflow_server, registered_model_name=MODEL_NAME)
    client = MlflowClient(mlflow_server)
    version = client.search_model_versions(f"run_id = '{logged.run_id}'")[0].version
    client.set_registered_model_alias(MODEL_NAME, "champion", version)
    return Registered(f"models:/{MODEL_NAME}@champion", mlflow_server)


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> ScanTree:
    """24 phantom CT series, one of them with a slice file cut short (a transfer that broke)."""
    tree = ScanTree(tmp_path_factory.mktemp("slurm-scans") / "scans")
    for seed in range(SERIES):
        tree.dicom(f"series_{seed:02d}", seed)
    broken = sorted((tree.root / CORRUPT).glob("*.dcm"))[3]
    broken.write_bytes(broken.read_bytes()[:600])
    del tree.good[CORRUPT]
    tree.corrupt.append(CORRUPT)
    return tree


def submit(
    cluster: SlurmCluster, registered: Registered, scans: Path, out: Path, work: Path
) -> tuple[str, str, str]:
    """``deploy/slurm/submit.sh`` as documented, run from ``work``: (array job id, summary job
    id, its output)."""
    work.mkdir(parents=True, exist_ok=True)
    output = cluster.run(
        "bash",
        str(SUBMIT),
        "--array=0-3",
        *ARRAY_OPTIONS,
        cwd=work,
        **_submit_env(registered, scans, out),
    )
    found = re.search(r"array job (\d+) .* summary job (\d+)", output)
    assert found, output
    return found[1], found[2], output


def _submit_env(registered: Registered, scans: Path, out: Path) -> dict[str, str]:
    """The documented variables of ``submit.sh`` and ``medseg-batch.sbatch`` for this test."""
    return {
        "SCANS_ROOT": str(scans),
        "OUT_DIR": str(out),
        "MODEL_URI": registered.uri,
        "MLFLOW_TRACKING_URI": registered.tracking_uri,
        "CONTAINER_RUNTIME": "none",  # medseg and python from this venv, on PATH
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        "WORKERS": "1",
        "CASE_IDS": "folder",
        "MLFLOW_ENV_FILE": "/nonexistent",  # never a developer's own credentials
    }


def summary_rows(out: Path) -> dict[str, dict[str, str]]:
    """``summary.csv`` by case id."""
    with (out / "summary.csv").open() as table:
        return {row["case_id"]: row for row in csv.DictReader(table)}


def shard_cases(scans: ScanTree) -> dict[int, set[str]]:
    """Which array task owns which series: ``medseg batch``'s rule on their series UIDs."""
    owners: dict[int, set[str]] = {}
    for case in (*scans.good, *scans.corrupt):
        first = sorted((scans.root / case).glob("*.dcm"))[0]
        uid = pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID
        owners.setdefault(shard_of(f"dicom:{uid}", SHARDS), set()).add(case)
    return owners


def finished(out: Path) -> dict[str, str]:
    """``case_id -> finished_at`` of every complete scan in ``out``."""
    return {
        path.parent.name: json.loads(path.read_text())["finished_at"]
        for path in out.glob("*/result.json")
    }


def shard_totals(log: str) -> tuple[int, int, int]:
    """(done, already complete, failed) from a task's closing line."""
    found = re.search(r"(\d+) done .*?, (\d+) already complete, (\d+) failed", log, re.S)
    assert found, log
    return int(found[1]), int(found[2]), int(found[3])


def processes_using(folder: Path) -> list[str]:
    """Command lines of the processes that name ``folder`` (a leftover medseg)."""
    done = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True, check=True)
    return [line for line in done.stdout.splitlines() if str(folder) in line]


def test_submit_sh_segments_every_scan_once_and_reports_the_corrupt_one(
    slurm_cluster: SlurmCluster,  # noqa: F811
    registered: Registered,
    scans: ScanTree,
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    array, summary, printed = submit(slurm_cluster, registered, scans.root, out, tmp_path)
    assert f"{registered.uri} is version 1" in printed  # pinned once for every shard
    states = slurm_cluster.wait_for(array)
    owners = shard_cases(scans)
    corrupt_task = next(task for task, cases in owners.items() if CORRUPT in cases)
    # a task with a failed scan exits 1 (FAILED); the summary job ran after all of them and
    # exits 1 as well, since a scan failed
    assert states == {
        f"{array}_{task}": "FAILED" if task == corrupt_task else "COMPLETED"
        for task in range(SHARDS)
    }
    assert slurm_cluster.wait_for(summary) == {summary: "FAILED"}
    logs = {
        task: (tmp_path / "logs" / f"medseg-batch-{array}_{task}.out").read_text()
        for task in range(SHARDS)
    }
    for task, log in logs.items():  # each task did its own shard, every scan once
        mine = owners[task] - {CORRUPT}
        assert shard_totals(log) == (len(mine), 0, int(task == corrupt_task)), log
    assert sum(shard_totals(log)[0] for log in logs.values()) == SERIES - 1
    assert sorted(finished(out)) == sorted(scans.good)
    rows = summary_rows(out)
    assert sorted(rows) == sorted(f"series_{seed:02d}" for seed in range(SERIES))
    assert {case for case, row in rows.items() if row["status"] != "done"} == {CORRUPT}
    assert {row["model"] for row in rows.values() if row["status"] == "done"} == {
        f"models:/{MODEL_NAME}/1"
    }
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [(f["case_id"], f["error_type"]) for f in failures] == [(CORRUPT, "MissingSlicesError")]
    summary_log = (tmp_path / "logs" / f"medseg-batch-summary-{summary}.out").read_text()
    assert "23 done, 1 failed" in summary_log


def test_a_cancelled_task_leaves_nothing_partial_and_its_resubmission_finishes_the_shard(
    slurm_cluster: SlurmCluster,  # noqa: F811
    registered: Registered,
    scans: ScanTree,
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    owners = shard_cases(scans)
    clean = [t for t in owners if CORRUPT not in owners[t]]
    task = max(clean, key=lambda t: len(owners[t]))  # the longest shard of good scans
    mine = owners[task]
    array, summary, _ = submit(slurm_cluster, registered, scans.root, out, tmp_path)
    deadline = time.monotonic() + 300
    while not set(finished(out)) & mine:  # cancel once it has finished a scan
        assert time.monotonic() < deadline, slurm_cluster.job_states(array)
        time.sleep(0.05)
    slurm_cluster.run("scancel", f"{array}_{task}")  # Slurm: SIGTERM, SIGKILL after KillWait
    states = slurm_cluster.wait_for(array)
    slurm_cluster.wait_for(summary)
    assert states[f"{array}_{task}"] == "CANCELLED"
    assert processes_using(out) == []  # no orphan medseg
    before = finished(out)
    done_before = set(before) & mine
    assert done_before and done_before != mine, "the cancel came after the shard's last scan"
    # nothing partial: a case folder appears only complete, no staging folder is left behind
    case_folders = {p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert case_folders == set(before)
    staging = out / ".staging"
    assert not staging.exists() or not any(staging.iterdir())

    # resubmit the one index, as documented: the shard count given explicitly
    again = slurm_cluster.run(
        "sbatch",
        "--parsable",
        f"--array={task}",
        *ARRAY_OPTIONS,
        str(SUBMIT.parent / "medseg-batch.sbatch"),
        cwd=tmp_path,
        SHARDS=str(SHARDS),
        **_submit_env(registered, scans.root, out) | {"MODEL_URI": f"models:/{MODEL_NAME}/1"},
    ).strip()
    assert slurm_cluster.wait_for(again) == {f"{again}_{task}": "COMPLETED"}
    after = finished(out)
    assert set(after) >= mine
    assert {case: after[case] for case in done_before} == {c: before[c] for c in done_before}
    log = (tmp_path / "logs" / f"medseg-batch-{again}_{task}.out").read_text()
    assert shard_totals(log) == (len(mine - done_before), len(done_before), 0), log
    assert processes_using(out) == []


SLOW_SCANS = 24
SLOW_FILTERS = 48  # a wider network: seconds per scan, so the task is still running at its limit


@pytest.fixture(scope="module")
def slow_model(tiny_dataset: TinyDataset, mlflow_server: str) -> str:  # noqa: F811
    """A wider U-Net registered as ``slurm-slow``: each phantom takes seconds."""
    name = "slurm-slow"
    log_tiny_unet(
        tiny_dataset.plan, mlflow_server, registered_model_name=name, base_filters=SLOW_FILTERS
    )
    return f"models:/{name}/1"


def test_a_task_past_its_time_limit_stops_cleanly_and_its_resubmission_finishes_the_shard(
    slurm_cluster: SlurmCluster,  # noqa: F811
    registered: Registered,
    slow_model: str,
    tmp_path: Path,
) -> None:
    tree = ScanTree(tmp_path / "scans")
    for seed in range(100, 100 + SLOW_SCANS):
        tree.dicom(f"series_{seed}", seed)
    out = tmp_path / "out"
    env = _submit_env(registered, tree.root, out) | {"MODEL_URI": slow_model}

    def submit_one_task(*options: str) -> str:
        return slurm_cluster.run(
            "sbatch",
            "--parsable",
            "--array=0",
            *ARRAY_OPTIONS,
            *options,
            str(SUBMIT.parent / "medseg-batch.sbatch"),
            cwd=tmp_path,
            **env,
        ).strip()

    (tmp_path / "logs").mkdir()
    limited = submit_one_task("--time=10")
    deadline = time.monotonic() + 300
    while not finished(out):  # once it has finished a scan, its limit drops to one minute
        assert time.monotonic() < deadline, slurm_cluster.job_states(limited)
        time.sleep(0.1)
    slurm_cluster.run("scontrol", "update", f"JobId={limited}_0", "TimeLimit=1")
    # under a minute left: the script's --signal=B:TERM@60 has Slurm send SIGTERM at its next
    # time-limit check (slurmctld checks every 30 s)
    slurm_cluster.wait_for(limited, timeout_s=300)
    log = (tmp_path / "logs" / f"medseg-batch-{limited}_0.out").read_text()
    state = slurm_cluster.run("scontrol", "show", "job", f"{limited}_0", "-o")
    assert "JobState=COMPLETED" not in state and "ExitCode=143:0" in state, (state, log)
    assert "stopped by SIGTERM" in log, log
    assert processes_using(out) == []
    before = finished(out)
    assert len(before) < SLOW_SCANS, "the limit came after the last scan"
    case_folders = {p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert case_folders == set(before)
    staging = out / ".staging"
    assert not staging.exists() or not any(staging.iterdir())

    again = submit_one_task()
    slurm_cluster.wait_for(again, timeout_s=600)
    after = finished(out)
    assert sorted(after) == sorted(tree.good)
    assert {case: after[case] for case in before} == before  # not redone
    log = (tmp_path / "logs" / f"medseg-batch-{again}_0.out").read_text()
    assert shard_totals(log) == (SLOW_SCANS - len(before), len(before), 0), log
