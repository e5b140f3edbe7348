"""Stopping on SIGTERM and SIGINT: the signal becomes an exception in the main thread.

Schedulers stop a job with SIGTERM and, after a grace period, SIGKILL (Slurm: ``KillWait``,
Kubernetes: ``terminationGracePeriodSeconds``, both 30 s by default). While a command runs
under ``stop_signals`` (the CLI root installs it), SIGTERM and SIGINT raise
``ShutdownRequested`` in the main thread, wherever it is, so the command stops at once: ``with``
blocks and ``finally`` clauses clean up (worker pools are killed, temporary files removed,
MLflow runs ended as KILLED) and the CLI exits with 128 + the signal number (143 for SIGTERM,
130 for SIGINT).

``ShutdownRequested`` derives from ``BaseException``, like ``KeyboardInterrupt``: the
``except Exception`` that keeps a batch going past one bad scan does not swallow it.

Work that must not stop halfway (a training step and its checkpoint) runs under ``deferred()``:
a signal that arrives there is held until the block ends, or until the code asks with
``requested()`` and stops itself at a safe point. ``interruptible()`` inside a deferred block
lets a long part (validation) be interrupted again. A second signal while stopping ends the
process at once with 128 + its number; child processes still end with it
(``medseg.lifeline``).

Only the process that installed the handlers reacts: a child forked from it inherits them but
ignores the signals, because its parent stops it.

A stopped process ends with ``exit_now``: after the ``atexit`` handlers it skips the
interpreter's teardown of every imported module, which takes seconds once torch and mlflow are
loaded (over 5 s on a busy machine) and would eat the scheduler's grace period.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
REDELIVER_SECONDS = 0.01


class ShutdownRequested(BaseException):
    """The process received a stop signal and is stopping."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def signal_name(self) -> str:
        """``SIGTERM``, ``SIGINT``, ..."""
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """128 + the signal number, what a shell reports for a process killed by it."""
        return 128 + self.signum

    def __str__(self) -> str:
        return f"stopped by {self.signal_name}"


@dataclass
class _StopState:
    """The process-wide state behind the signal handler."""

    owner_pid: int = 0  # the process that installed the handlers
    signum: int | None = None  # the stop signal received, if any
    raised: bool = False  # ShutdownRequested was raised already: raise it once only
    redelivered: bool = False  # the signal is sent again because its exception was swallowed
    active: bool = True  # False once ``stop_signals`` ended: nothing is sent again then
    holding: list[bool] = field(default_factory=list)  # deferred (True) / interruptible (False)
    unraisablehook: Callable[[sys.UnraisableHookArgs], object] = sys.__unraisablehook__

    def held(self) -> bool:
        return bool(self.holding) and self.holding[-1]


_state = _StopState(active=False)
_redelivery_lock = threading.Lock()  # a redelivery never lands after the handlers are restored
_stopped_by: int | None = None  # the signal that stopped this process (kept after the command)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _state.owner_pid:  # a forked child: its parent stops it
        return
    if _state.redelivered:
        _state.redelivered = False
    elif _state.signum is not None:  # asked again while stopping: stop now
        os._exit(128 + signum)
    _state.signum = signum
    if not _state.held():
        stop(signum)


def _on_unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    """Python ignores exceptions raised where nothing can catch them (a ``__del__``, an
    at-fork hook...): a stop that lands there is delivered again, to the code that follows."""
    stopped = unraisable.exc_value
    if isinstance(stopped, ShutdownRequested) and os.getpid() == _state.owner_pid:
        _state.raised = False
        _state.redelivered = True
        # from another thread, a moment later: the handler must not run inside this hook
        again = threading.Timer(REDELIVER_SECONDS, _redeliver, (_state, stopped.signum))
        again.daemon = True
        again.start()
    else:
        _state.unraisablehook(unraisable)


def _redeliver(state: _StopState, signum: int) -> None:
    """Send ``signum`` again, unless the ``stop_signals`` block that swallowed it has ended
    (the default handler would then kill the process)."""
    with _redelivery_lock:
        if state.active:
            os.kill(os.getpid(), signum)


def stop(signum: int = signal.SIGTERM) -> None:
    """Stop this process as if ``signum`` had arrived: raise ``ShutdownRequested``.

    For code that learns of a stop another way (a DDP rank whose peer received the signal).
    """
    global _stopped_by
    if _state.signum is None:
        _state.signum = signum
    _state.raised = True
    _stopped_by = _state.signum
    raise ShutdownRequested(_state.signum)


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise ``ShutdownRequested`` in the main thread.

    The previous handlers come back afterwards. Outside the main thread (where Python cannot
    install handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _state
    previous_state = _state
    _state = _StopState(owner_pid=os.getpid(), unraisablehook=sys.unraisablehook)
    previous = {signum: signal.signal(signum, _on_signal) for signum in STOP_SIGNALS}
    sys.unraisablehook = _on_unraisable
    try:
        yield
    finally:
        with _redelivery_lock:
            _state.active = False
        sys.unraisablehook = _state.unraisablehook
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _state = previous_state


def requested() -> int | None:
    """The stop signal this process received while ``stop_signals`` was active, or None."""
    return _state.signum


def raise_if_requested() -> None:
    """Raise ``ShutdownRequested`` if a stop signal arrived and it was not raised yet."""
    if _state.signum is not None and not _state.raised:
        stop(_state.signum)


def reraise_if_stopping(error: BaseException) -> None:
    """Raise again the ``ShutdownRequested`` that ``error`` replaced, if it replaced one.

    A stop signal that lands in cleanup code can turn into another exception there (a thread
    pool joining a thread whose start the signal interrupted raises ``RuntimeError``). An
    ``except Exception`` that reports one bad case calls this first, so the stop is not
    reported as that case's failure.
    """
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ShutdownRequested):
            raise cause from error
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold stop signals until the block ends; then raise ``ShutdownRequested`` if one came.

    Inside, call ``requested()`` to stop earlier at a safe point of your own. Signals are
    handled in the main thread: in other threads this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.holding.append(True)
    try:
        yield
    finally:
        _state.holding.pop()
    if not _state.held():
        raise_if_requested()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Inside a ``deferred`` block: let stop signals raise again (raises at once if one came)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.holding.append(False)
    try:
        raise_if_requested()
        yield
    finally:
        _state.holding.pop()


def stopped_by() -> int | None:
    """The signal that stopped a command in this process (``ShutdownRequested`` was raised)."""
    return _stopped_by


def exit_now(code: int) -> None:
    """End the process with ``code`` after the ``atexit`` handlers, skipping module teardown."""
    # multiprocessing's exit handler terminates and joins the worker processes left (a
    # DataLoader's): their exit must not run the SIGCHLD handler torch installed, which raises
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    atexit._run_exitfuncs()  # what a normal exit runs, without the teardown
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
