"""Pull: find the series the filter rules take and retrieve each into its own folder.

A series is retrieved into a staging folder beside the target, checked (as many instances as
the PACS announced), finished with ``pull.json`` and renamed into
``<incoming>/<series key>/`` in one step, so a folder there is always a complete series and
a killed pull leaves nothing half-written where the batch looks. Series already there, or
already delivered with the current model (``skip``), are not retrieved again. A series that
cannot be retrieved after the retries is reported and the others go on.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from medseg.batch.records import now_utc
from medseg.errors import PacsError, PacsUnavailableError
from medseg.io.atomic import write_json_atomic
from medseg.pacs.client import PacsClient, SeriesInfo
from medseg.pacs.config import PacsConfig
from medseg.pacs.filters import SeriesFilter
from medseg.pacs.retry import with_retry
from medseg.pacs.state import PULL_RECORD, series_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PullFailure:
    """A series that could not be retrieved (identified by its key, never its UIDs)."""

    series_key: str
    reason: str


@dataclass
class PullReport:
    """What one pull did."""

    matched: int = 0  # series the rules took
    pulled: list[str] = field(default_factory=list)  # series keys retrieved now
    present: list[str] = field(default_factory=list)  # complete before this pull
    delivered: list[str] = field(default_factory=list)  # already sent with this model
    other_shards: int = 0  # taken, but handled by another shard
    left_out: Counter[str] = field(default_factory=Counter)  # reason -> series count
    failed: list[PullFailure] = field(default_factory=list)
    seconds: float = 0.0


def pulled_series_folder(incoming: Path, series_uid: str) -> Path:
    """Where ``series_uid`` is once pulled."""
    return Path(incoming) / series_key(series_uid)


def is_pulled(incoming: Path, series_uid: str) -> bool:
    """Whether ``series_uid`` was pulled completely into ``incoming``."""
    return (pulled_series_folder(incoming, series_uid) / PULL_RECORD).is_file()


def pull(
    client: PacsClient,
    config: PacsConfig,
    incoming: Path,
    *,
    skip: Callable[[SeriesInfo], bool] | None = None,
    owns: Callable[[str], bool] | None = None,
    today: date | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> PullReport:
    """Retrieve into ``incoming`` every series the rules of ``config`` take (see module doc).

    ``skip(series)``: already delivered, not needed; ``owns(series_uid)``: whether this
    shard of a job array handles the series (default: all).

    Raises:
        PacsError: the PACS cannot be searched (after the retries): nothing can be pulled.
    """
    started = time.perf_counter()
    rules = SeriesFilter(config.filters, today=today)
    found = with_retry(
        lambda: client.find_series(rules.query()), config.retry, what=f"{client.name}: search"
    )
    taken, reasons = rules.select(found)
    report = PullReport(matched=len(taken), left_out=Counter(reasons))
    incoming = Path(incoming)
    incoming.mkdir(parents=True, exist_ok=True)
    for series in taken:
        key = series_key(series.series_uid)
        if owns is not None and not owns(series.series_uid):
            report.other_shards += 1
        elif is_pulled(incoming, series.series_uid):
            report.present.append(key)
        elif skip is not None and skip(series):
            report.delivered.append(key)
        else:
            try:
                _pull_one(client, config, series, incoming, sleep=sleep)
                report.pulled.append(key)
            except PacsError as error:
                logger.error("series %s not pulled: %s", key, error)
                report.failed.append(PullFailure(key, str(error)))
    report.seconds = time.perf_counter() - started
    return report


def _pull_one(
    client: PacsClient,
    config: PacsConfig,
    series: SeriesInfo,
    incoming: Path,
    *,
    sleep: Callable[[float], None],
) -> None:
    key = series_key(series.series_uid)
    staging = incoming.parent / f".{incoming.name}.staging" / key
    target = incoming / key

    def retrieve() -> int:
        shutil.rmtree(staging, ignore_errors=True)
        files = client.retrieve_series(series, staging)
        if series.instances is not None and len(files) < series.instances:
            raise PacsUnavailableError(
                f"{client.name}: series {key}: retrieved {len(files)} of "
                f"{series.instances} instances"
            )
        return len(files)

    count = with_retry(retrieve, config.retry, what=f"{client.name}: retrieve {key}", sleep=sleep)
    record = {"series_key": key, "instances": count, "pulled_at": now_utc(), "pacs": client.name}
    write_json_atomic(staging / PULL_RECORD, record)
    shutil.rmtree(target, ignore_errors=True)  # an incomplete leftover (no pull.json)
    staging.rename(target)
    logger.info("pulled series %s (%d instances)", key, count)
