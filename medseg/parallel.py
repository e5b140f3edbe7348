"""Worker-process pools that are safe to start from a process that already ran torch, and that
never outlive it.

A forked child inherits a copy of the parent's OpenMP thread pool (GNU libgomp, which torch
uses on the CPU) without its threads: the child's first parallel torch operation then waits
forever. Pools are therefore started from a forkserver by default, a clean process that imports
the given modules once and forks the workers from there.

Every worker is tied to the process that made the pool (``medseg.lifeline``): it ignores
SIGINT/SIGTERM and ends when that process ends, also after a SIGKILL. Leaving a pool's ``with``
block by an exception (``ShutdownRequested`` on SIGTERM, an error) kills the workers and drops
the queued work instead of waiting for it (``ProcessPoolExecutor`` would finish every queued
item first).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from types import TracebackType
from typing import Literal

from medseg.lifeline import tie_to_parent, wait_until_gone

STOP_TIMEOUT_SECONDS = 5.0
FORKSERVER_PRELOAD = "medseg.forkserver_preload"  # ties the forkserver itself to this process


class WorkerPool(ProcessPoolExecutor):
    """A ``ProcessPoolExecutor`` whose ``with`` block kills its workers on an exception."""

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> Literal[False]:
        if exc_type is None:
            self.shutdown(wait=True)
        else:
            self.stop()
        return False

    def stop(self) -> None:
        """Kill the workers now, cancel the queued work and wait until the pool is down.

        Returns once the workers have exited (or ``STOP_TIMEOUT_SECONDS`` passed), so what
        they held (file locks, output folders) is free. A forkserver's exit report cannot be
        trusted for that: when the forkserver died first it reports its children as ended.
        """
        # ProcessPoolExecutor has no public way to end busy workers before Python 3.14
        # (``kill_workers``): its ``_processes`` maps pid -> Process.
        processes = list((getattr(self, "_processes", None) or {}).values())
        for process in processes:
            with contextlib.suppress(OSError, ValueError):  # already gone, or closed
                process.kill()
        # a stop signal can interrupt the start of the pool's manager thread: it cannot be joined
        manager = getattr(self, "_executor_manager_thread", None)
        self.shutdown(wait=manager is None or manager.ident is not None, cancel_futures=True)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for process in processes:
            if process.pid is not None:
                wait_until_gone(process.pid, timeout=max(0.0, deadline - time.monotonic()))


def process_pool(
    workers: int,
    *,
    preload: Sequence[str] = (),
    initializer: Callable[..., object] | None = None,
    initargs: tuple[object, ...] = (),
    start_method: str | None = "forkserver",
) -> WorkerPool:
    """A pool of ``workers`` processes tied to this one (see the module doc).

    ``start_method`` is ``"forkserver"`` (default; ``preload`` names modules the forkserver
    imports before forking, honoured by the first pool of the process only), or ``None`` for
    the platform's default, for pools that only decode files (cheaper to start).
    """
    context = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        context.set_forkserver_preload([FORKSERVER_PRELOAD, *preload])
    return WorkerPool(
        max_workers=max(1, workers),
        mp_context=context,
        initializer=_start_worker,
        initargs=(os.getpid(), initializer, initargs),
    )


def _start_worker(
    parent_pid: int, initializer: Callable[..., object] | None, initargs: tuple[object, ...]
) -> None:
    tie_to_parent(parent_pid)
    if initializer is not None:
        initializer(*initargs)
