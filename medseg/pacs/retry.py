"""Retry with exponential backoff for PACS requests (one policy for DICOMweb and DIMSE).

Both kinds of PACS error are retried: ``PacsUnavailableError`` (down, timeout, HTTP 5xx) and
``PacsRefusedError`` (the PACS answered no: often a full disk or a busy archive that accepts
later). After the last attempt the error is raised; callers turn it into a failure record and
keep the result for the next run, so nothing is lost. Configuration errors are not retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from medseg.errors import PacsRefusedError, PacsUnavailableError
from medseg.pacs.config import RetrySettings

logger = logging.getLogger(__name__)

Result = TypeVar("Result")
RETRIED = (PacsUnavailableError, PacsRefusedError)


def backoff_delays(settings: RetrySettings) -> list[float]:
    """The waits between attempts: ``initial``, doubling, capped at ``max``."""
    return [
        min(settings.initial_delay_seconds * 2**attempt, settings.max_delay_seconds)
        for attempt in range(settings.attempts - 1)
    ]


def with_retry(
    action: Callable[[], Result],
    settings: RetrySettings,
    *,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
) -> Result:
    """``action()``, retried after PACS errors with backoff.

    Raises:
        PacsUnavailableError | PacsRefusedError: the last attempt's error, of the same class,
            its message ending with how many attempts were made.
    """
    delays = backoff_delays(settings)
    for attempt in range(settings.attempts):
        try:
            return action()
        except RETRIED as error:
            if attempt == len(delays):
                tries = f"{settings.attempts} attempt{'s' if settings.attempts > 1 else ''}"
                raise type(error)(f"{error} (gave up after {tries})") from error
            logger.warning(
                "%s failed (attempt %d of %d): %s; retrying in %.1f s",
                what,
                attempt + 1,
                settings.attempts,
                error,
                delays[attempt],
            )
            sleep(delays[attempt])
    raise AssertionError("unreachable: the last attempt returns or raises")
