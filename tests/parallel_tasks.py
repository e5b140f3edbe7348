"""Functions for pool tests, run in worker processes (kept free of heavy imports)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def sleep_after_saying_so(folder: str, seconds: float = 120.0) -> None:
    """Create ``folder/<pid>`` (the worker is busy now), then sleep."""
    (Path(folder) / str(os.getpid())).touch()
    time.sleep(seconds)


def main(folder: str, start_method: str) -> None:
    """A parent whose pool workers are all busy (``python -m tests.parallel_tasks``)."""
    from medseg.parallel import process_pool

    pool = process_pool(2, start_method=None if start_method == "default" else start_method)
    futures = [pool.submit(sleep_after_saying_so, folder) for _ in range(2)]
    time.sleep(3600)
    print(futures)


if __name__ == "__main__":
    import sys

    main(sys.argv[1], sys.argv[2])
