"""The one shape of progress reports that long-running functions accept."""

from __future__ import annotations

from collections.abc import Callable

ProgressCallback = Callable[[str, int, int], None]
"""``on_progress(phase, done, total)``: the phase being worked on (``"Preprocessing"``,
``"Predicting"``, ...; the CLI shows one progress bar per phase), the items done so far in it
and the items it has in total."""
