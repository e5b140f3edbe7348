"""Wall time and peak resident memory of a command and every process it starts, for the
benchmarks that compare memory (``large_volume.py``, ``plan_memory.py``)."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

LOG = logging.getLogger("measure")


def _rss_mb(pid: int) -> float:
    """Resident memory (MB) of one process, 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    """The direct children of ``pid`` (every thread's)."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return children


def tree_rss_mb(pid: int) -> float:
    """Resident memory (MB) of ``pid`` and all its descendants (worker processes included)."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        total += _rss_mb(current)
        pending += _children(current)
    return total


def measured(command: list[str], *, log: Path, cap_mb: float) -> dict[str, Any]:
    """Run ``command``: wall seconds, peak resident MB of its process tree (polled every 0.2
    s), exit code, and whether it was stopped at ``cap_mb``."""
    start = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    peak, capped = 0.0, False
    while process.poll() is None:
        rss = tree_rss_mb(process.pid)
        peak = max(peak, rss)
        if rss > cap_mb:
            capped = True
            process.send_signal(signal.SIGKILL)
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    LOG.info("%s: %.1f s, peak %.0f MB, exit %s", log.stem, seconds, peak, process.returncode)
    return {
        "seconds": round(seconds, 1),
        "peak_mb": round(peak),
        "exit_code": process.returncode,
        "stopped_at_cap": capped,
    }
