"""Functions for executor tests, run in worker processes (kept free of heavy imports)."""

from __future__ import annotations

import os


def square_but_die_on_3(item: int) -> int:
    """``item ** 2``; item 3 kills its worker process (like a segfault), item 5 raises."""
    if item == 3:
        os._exit(70)
    if item == 5:
        raise ValueError("five is refused")
    return item * item


def pid_of_worker(item: int) -> int:
    """The worker's process id (to see which items shared a worker)."""
    return os.getpid()
