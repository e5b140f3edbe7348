"""Worker-process pools that are safe to start from a process that already ran torch.

A forked child inherits a copy of the parent's OpenMP thread pool (GNU libgomp, which torch
uses on the CPU) without its threads: the child's first parallel torch operation then waits
forever. Pools are therefore started from a forkserver, a clean process that imports the
given modules once and forks the workers from there.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def process_pool(
    workers: int,
    *,
    preload: Sequence[str] = (),
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
) -> ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` of ``workers`` processes forked from a clean forkserver.

    ``preload`` names modules the forkserver imports before forking (only honoured by the
    first pool of the process, which starts the forkserver).
    """
    context = multiprocessing.get_context("forkserver")
    if preload:
        context.set_forkserver_preload(list(preload))
    return ProcessPoolExecutor(
        max_workers=max(1, workers), mp_context=context, initializer=initializer, initargs=initargs
    )
