"""A real ``medseg batch`` killed with SIGKILL mid-run, then restarted: every scan done once."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medseg.batch.runner import BatchSettings, run_batch
from medseg.io.nifti import read_nifti
from medseg.phi import hash_identifier
from tests.batch.conftest import BatchModel, batch_command
from tests.batch.test_batch_run import file_stamps
from tests.batch.trees import PHANTOM_SEEDS, ScanTree

REPOSITORY = Path(__file__).resolve().parents[2]


def _complete(out: Path) -> set[str]:
    return {p.parent.name for p in out.glob("*/result.json")}


@pytest.mark.slow  # minutes of commands: the serial slow suite, so make test stays < 15 min
def test_a_batch_killed_at_any_moment_ends_with_every_scan_done_once(
    batch_model: BatchModel, tmp_path: Path
) -> None:
    tree = ScanTree(tmp_path / "scans")
    for seed in PHANTOM_SEEDS:
        tree.nifti(f"inbox/phantom_{seed}.nii.gz", seed)
    ids = {f"nifti_{hash_identifier(relative)}": relative for relative in tree.good}
    out = tmp_path / "out"
    batch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medseg",
            *batch_command(tree.root, batch_model, out, "--workers", "2"),
        ],
        cwd=REPOSITORY,
        start_new_session=True,  # its own process group: the parent, forkserver and workers
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 180
        while not _complete(out):
            assert batch.poll() is None, batch.stderr.read().decode()
            assert time.monotonic() < deadline, "no scan finished in time"
            time.sleep(0.01)
    finally:
        os.killpg(batch.pid, signal.SIGKILL)
        batch.wait()
    assert batch.returncode == -signal.SIGKILL
    done_before = _complete(out)
    assert 0 < len(done_before) < len(ids), "the kill came when some scans were done, not all"
    # outputs appear atomically: every case folder that exists is complete
    assert {p.name for p in out.iterdir() if p.is_dir() and p.name[0] != "."} == done_before
    stamps = {case_id: file_stamps(out / case_id) for case_id in done_before}

    report = run_batch(
        tree.root,
        batch_model.uri,
        out,
        settings=BatchSettings(workers=2, tracking_uri=batch_model.tracking_uri),
    )
    assert report.exit_code == 0 and report.failed == []
    assert sorted(report.skipped) == sorted(done_before)
    assert sorted(r.case_id for r in report.done) == sorted(set(ids) - done_before)
    assert _complete(out) == set(ids)
    assert {case_id: file_stamps(out / case_id) for case_id in done_before} == stamps
    for case_id, relative in ids.items():
        labels = read_nifti(out / case_id / f"{case_id}.nii.gz")
        assert labels.same_grid(read_nifti(tree.root / relative).to_closest_ras())
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert sorted(row["case_id"] for row in rows) == sorted(ids)
    assert list((out / ".staging").iterdir()) == []  # the killed scans' leftovers are gone
