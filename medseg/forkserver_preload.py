"""Ties a forkserver to the medseg process that started it: for forkserver preload lists only.

``medseg.parallel`` puts this module first in every forkserver's preload list. The forkserver
imports it once at start, and so calls ``medseg.lifeline.tie_to_parent`` on itself: it ignores
SIGINT/SIGTERM like the workers (medseg stops them), and exits the moment medseg exits, even by
SIGKILL, instead of after its own teardown (seconds, with torch and mlflow preloaded). There is
no call to make: the import is the effect, so never import this module anywhere else.
"""

from __future__ import annotations

import os

from medseg.lifeline import tie_to_parent

# The forkserver is a direct child of medseg, but may have been started from a thread that
# ends before the process does: no parent-death signal, the watchdog thread only.
tie_to_parent(os.getppid(), death_signal=False)
