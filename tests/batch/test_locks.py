"""Per-case locks: held by one process at a time, released when the holder dies."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from medseg.batch.locks import case_lock, lock_path

HOLD = """
import sys, time
from pathlib import Path
from medseg.batch.locks import case_lock
with case_lock(Path(sys.argv[1]), "case_a", wait=False) as held:
    print(held, flush=True)
    time.sleep(600)
"""


def _holder(out: Path) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "True"
    return holder


def test_a_case_locked_by_a_live_process_is_left_to_it(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    try:
        with case_lock(tmp_path, "case_a", wait=False) as held:
            assert held is False
        with case_lock(tmp_path, "case_b", wait=False) as held:  # other cases are free
            assert held is True
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_holder_is_free_at_once(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with case_lock(tmp_path, "case_a", wait=False) as held:
        assert held is True
    assert lock_path(tmp_path, "case_a").exists()  # lock files stay (see medseg.batch.locks)


def test_waiting_for_a_lock_ends_when_the_holder_ends(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    subprocess.Popen(["sh", "-c", f"sleep 1; kill {holder.pid}"])
    started = time.monotonic()
    with case_lock(tmp_path, "case_a", wait=True) as held:
        assert held is True
    assert time.monotonic() - started >= 0.5
    holder.wait()
