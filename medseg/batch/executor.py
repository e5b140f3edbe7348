"""Run a function over items in worker processes, surviving workers that die.

``concurrent.futures.ProcessPoolExecutor`` turns the death of one worker (segfault, OOM kill,
``os._exit``) into ``BrokenProcessPool`` for every unfinished item, without saying which item
killed it. ``run_isolated`` therefore keeps at most ``workers`` items in flight, so every item in
flight is running, and when the pool breaks:

1. the items that were in flight become suspects; the queued ones were never started and go on
   in a new pool;
2. at the end each suspect runs again alone, in a pool of one worker: one that succeeds is an
   innocent bystander; one that kills its worker again is reported as ``WorkerDiedError``.

Results come back as they finish, as ``(item, outcome)`` with ``outcome`` the function's return
value, or the exception it raised, or a ``WorkerDiedError``: nothing raises out of the loop.

Closing the generator early (``close()``, or an exception such as ``ShutdownRequested`` while it
runs) kills the workers at once: the items in flight are abandoned, not waited for.

Workers start with ``forkserver``: a server process imports the heavy modules once (``preload``)
and forks each worker from it, so starting and restarting workers is cheap; unlike ``fork`` it
does not copy the caller's threads and locks. The server keeps the environment and working
folder it started with, so pass the worker everything it needs (absolute paths, settings).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from medseg.errors import WorkerDiedError
from medseg.parallel import WorkerPool, process_pool

T = TypeVar("T")


def _pool(
    workers: int,
    initializer: Callable[..., object] | None,
    initargs: tuple[object, ...],
    preload: Sequence[str],
) -> WorkerPool:
    return process_pool(workers, preload=preload, initializer=initializer, initargs=initargs)


def run_isolated(
    function: Callable[[T], Any],
    items: Iterable[T],
    *,
    workers: int,
    initializer: Callable[..., object] | None = None,
    initargs: tuple[object, ...] = (),
    preload: Sequence[str] = (),
) -> Generator[tuple[T, Any], None, None]:
    """Yield ``(item, outcome)`` for every item, in the order they finish (see the module doc).

    ``function`` and ``initializer`` must be importable module-level functions; ``initializer``
    runs once in every worker process (e.g. to load a model).
    """
    pending = deque(items)
    suspects: list[T] = []
    pool_args = (initializer, initargs, preload)
    while pending:
        suspects += yield from _run_until_broken(function, pending, max(1, workers), pool_args)
    pool: WorkerPool | None = None
    try:
        for item in suspects:
            pool = pool or _pool(1, *pool_args)
            try:
                outcome = pool.submit(function, item).result()
            except BrokenProcessPool:
                outcome = WorkerDiedError("worker process died (also when running this scan alone)")
                pool.shutdown(wait=True)
                pool = None
            except Exception as error:
                outcome = error
            yield item, outcome
    except BaseException:  # closed early or stopping: do not wait for the item in flight
        if pool is not None:
            pool.stop()
            pool = None
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)


def _run_until_broken(
    function: Callable[[T], Any],
    pending: deque[T],
    workers: int,
    pool_args: tuple[Any, ...],
) -> Generator[tuple[T, Any], None, list[T]]:
    """Run ``pending`` in one pool until done or broken; returns the suspects (generator)."""
    in_flight: dict[Future, T] = {}
    suspects: list[T] = []
    with _pool(workers, *pool_args) as pool:
        while (pending or in_flight) and not suspects:
            try:
                while pending and len(in_flight) < workers:
                    future = pool.submit(function, pending[0])
                    in_flight[future] = pending.popleft()
            except BrokenProcessPool:  # broke since the last wait: the futures tell why
                if not in_flight:  # an idle worker died: start a new pool
                    break
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            if any(_broke(future) for future in done):
                done, _ = wait(in_flight)  # a broken pool fails everything still in flight
            for future in done:
                item = in_flight.pop(future)
                if _broke(future):
                    suspects.append(item)
                    continue
                try:
                    outcome = future.result()
                except Exception as error:
                    outcome = error
                yield item, outcome
    return suspects


def _broke(future: Future) -> bool:
    return isinstance(future.exception(), BrokenProcessPool)
