"""Run a test in a child process forked from the pytest worker (``@in_forked_child``).

For tests that send a signal to their own process: the CLI receives its signals in a fresh
process, while a pytest worker holds whatever earlier tests left in it (threads of worker
pools, libraries' thread pools), and a signal that one of those took once killed an xdist
worker. A forked child has the calling thread only. Fixtures are set up in the worker before
the fork; what the test changes in the child stays there.
"""

from __future__ import annotations

import functools
import os
import signal
import traceback
from collections.abc import Callable
from typing import Any

import pytest


def in_forked_child(test: Callable[..., None]) -> Callable[..., None]:
    """The test, run in a forked child: its failure (traceback) or death fails the test."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report through the pipe, never return into pytest
            os.close(read)
            code = 0
            try:
                test(*args, **kwargs)
            except BaseException:
                os.write(write, traceback.format_exc().encode())
                code = 1
            finally:
                os._exit(code)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            failure = pipe.read().decode(errors="replace")
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            pytest.fail(f"the forked test died of {signal.Signals(os.WTERMSIG(status)).name}")
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            pytest.fail(failure or f"the forked test exited with {code}", pytrace=False)

    return run
