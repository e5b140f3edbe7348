"""Run a test in a fresh Python interpreter (``@in_fresh_interpreter``).

For tests that send a signal to their own process: the CLI receives its signals in a fresh
process, while a pytest worker holds whatever earlier tests loaded into it (torch, OpenVINO and
their thread pools...). There a self-sent SIGTERM killed an xdist worker three times in CI,
and in a child forked from such a worker, starting a thread crashed with SIGSEGV. So the test
runs again, alone, in a new ``python -m pytest`` process, and its outcome is this test's.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
INNER = "MEDSEG_TEST_IN_FRESH_INTERPRETER"  # set to the node id in the fresh interpreter
TIMEOUT_SECONDS = 300


def _node_id() -> str:
    """The running test's node id (``PYTEST_CURRENT_TEST`` without its `` (call)`` phase)."""
    return os.environ["PYTEST_CURRENT_TEST"].rsplit(" ", 1)[0]


def in_fresh_interpreter(test: Callable[..., None]) -> Callable[..., None]:
    """The test, run by a new pytest process; its failure (output included) fails this one."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        node = _node_id()
        if os.environ.get(INNER) == node:
            test(*args, **kwargs)
            return
        command = [sys.executable, "-m", "pytest", "-q", "--noconftest", "-p", "no:xdist"]
        command += ["-p", "no:cacheprovider"]  # conftest's session fixtures are not needed
        result = subprocess.run(
            [*command, node],
            cwd=REPOSITORY,
            env=os.environ | {INNER: node},
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
            check=False,
        )
        assert result.returncode == 0, (
            f"in a fresh interpreter, exit {result.returncode}:\n{result.stdout}{result.stderr}"
        )

    return run
