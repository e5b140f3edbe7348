"""Child processes that end with the process that started them.

SIGKILL cannot be caught, so a killed medseg process cannot stop its children; left alone they
keep running (a batch worker blocks forever on its task queue, and keeps the forkserver and
multiprocessing's resource tracker alive with it). Every worker process medseg starts therefore
calls ``tie_to_parent`` first:

- it ignores SIGINT, and SIGTERM unless its parent sent it: a terminal's Ctrl-C and a
  scheduler's SIGTERM reach the whole process group, and the parent, not each worker, decides
  how to stop (``medseg.shutdown``), while ``Process.terminate()`` from the parent (DataLoader
  and multiprocessing clean-up) still ends the worker at once. SIGTERM is blocked in the
  worker's threads and taken by a thread that reads who sent it (``sigwaitinfo``; where that
  does not exist, macOS, SIGTERM keeps its default action). A program the worker executes
  inherits the blocked SIGTERM;
- on Linux, a direct child asks the kernel for SIGKILL when its parent dies
  (``prctl(PR_SET_PDEATHSIG)``; strictly, when the parent *thread* that forked it ends, which is
  why medseg forks pools from the thread that waits for them);
- a watchdog thread waits for the parent process to end and then ends the child. It also covers
  children that are not direct ones: a forkserver's workers are children of the forkserver,
  not of medseg. It uses a pidfd where the OS has them (Linux >= 5.3: woken the moment the
  parent exits, a zombie parent included) and otherwise polls every ``POLL_SECONDS``.

A forkserver would exit by itself once every process holding its pipe (medseg and the workers)
is gone, but only after tearing down its preloaded modules: it is tied to medseg too
(``medseg.forkserver_preload``). multiprocessing's resource tracker exits once every process
holding its pipe is gone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import signal
import sys
import threading
import time

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5
ORPHAN_EXIT_CODE = 128 + signal.SIGKILL  # as if killed with the parent
_PR_SET_PDEATHSIG = 1


def tie_to_parent(parent_pid: int, *, death_signal: bool = True) -> None:
    """In a child process: ignore stop signals and end when process ``parent_pid`` ends.

    Call it first in the child (a pool's initializer, a DataLoader's ``worker_init_fn``).
    ``death_signal`` False skips ``PR_SET_PDEATHSIG`` (for a child whose parent thread may end
    before the parent process).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "sigwaitinfo"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later too
        threading.Thread(
            target=_obey_sigterm_from, args=(parent_pid,), name="medseg-sigterm", daemon=True
        ).start()
    else:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    direct = os.getppid() == parent_pid
    if direct and death_signal:
        _kill_me_with_parent()
    threading.Thread(
        target=_exit_when_gone, args=(parent_pid, direct), name="medseg-lifeline", daemon=True
    ).start()


def _kill_me_with_parent() -> None:
    """``prctl(PR_SET_PDEATHSIG, SIGKILL)`` on Linux; nothing elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError) as error:  # no libc prctl: the watchdog still works
        logger.debug("prctl(PR_SET_PDEATHSIG) unavailable: %s", error)


def _obey_sigterm_from(parent_pid: int) -> None:
    """End this process on a SIGTERM sent by ``parent_pid``; drop those sent by others."""
    while True:
        sender = signal.sigwaitinfo({signal.SIGTERM}).si_pid
        if sender == parent_pid:
            os._exit(128 + signal.SIGTERM)
        logger.debug("SIGTERM from process %d left to the parent", sender)


def _exit_when_gone(parent_pid: int, direct: bool) -> None:
    """Block until process ``parent_pid`` has ended, then end this process."""
    wait_until_gone(parent_pid, direct_parent=direct)
    os._exit(ORPHAN_EXIT_CODE)


def wait_until_gone(pid: int, *, timeout: float | None = None, direct_parent: bool = False) -> bool:
    """Wait until process ``pid`` has exited (a zombie counts); False if ``timeout`` passed.

    ``direct_parent``: ``pid`` is this process' parent, gone as soon as this one is reparented.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (AttributeError, OSError):  # no pidfds here: poll
        while not _gone(pid, direct_parent):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS if deadline is None else 0.05)
        return True
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout)  # readable once it exited
    finally:
        os.close(pidfd)
    return bool(readable)


def _gone(pid: int, direct_parent: bool) -> bool:
    if direct_parent and os.getppid() != pid:  # reparented: the parent has exited
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # PermissionError: the pid was reused
        return True
    return False
