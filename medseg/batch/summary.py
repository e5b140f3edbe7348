"""``summary.csv`` and ``failures.jsonl``: regenerated from the per-scan records of OUT_DIR.

Neither file is appended to: both are rebuilt from every ``<case_id>/result.json`` and
``.failures/<case_id>.json`` at the end of each run (and by ``medseg batch-summary``), and
replaced atomically. Shards writing into one OUT_DIR take an advisory lock around the rebuild,
so the last shard to finish writes a summary with every scan (where the file system has no
``flock``, the last rebuild may miss a scan that another shard finished at the same moment:
run ``medseg batch-summary`` after the array).

``summary.csv``: one row per scan, by case id: ``case_id, status, source, seconds, model,
finished_at``, one ``<structure>_ml`` column per structure, in the model's label order, and,
when the scans have confidence scores, one ``<structure>_confidence`` column per structure
(empty for failed scans and for structures not found); ``source`` is empty unless the batch
used ``--case-ids folder``.
``failures.jsonl``: one JSON object per failed scan (``case_id``, ``source`` when allowed,
``reason``, ``error_type``, ``time``, ``seconds``, ``status``).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from medseg.batch.layout import read_failures, read_results
from medseg.batch.records import ScanFailure, ScanResult
from medseg.io.atomic import write_text_atomic

logger = logging.getLogger(__name__)

SUMMARY_CSV = "summary.csv"
FAILURES_JSONL = "failures.jsonl"
_LOCK_FILE = ".summary.lock"
FIXED_COLUMNS = ["case_id", "status", "source", "seconds", "model", "finished_at"]


@dataclass(frozen=True)
class SummaryFiles:
    """The rebuilt files and what they count."""

    csv: Path
    failures: Path
    done: int
    failed: int


def structure_columns(results: list[ScanResult]) -> list[str]:
    """Every structure of the results, in label order (first seen order across models)."""
    names: dict[str, None] = {}
    for result in results:
        names.update(dict.fromkeys(result.structures or result.volumes_ml))
    return list(names)


def summary_csv_text(results: list[ScanResult], failures: list[ScanFailure]) -> str:
    """The CSV: one row per scan, volume columns ``<structure>_ml`` (full float precision),
    then ``<structure>_confidence`` columns when any scan has confidence scores."""
    structures = structure_columns(results)
    scored = structures if any(r.confidence for r in results) else []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = [f"{name}_ml" for name in structures] + [f"{name}_confidence" for name in scored]
    writer.writerow(FIXED_COLUMNS + header)
    rows = [
        [r.case_id, r.status, r.source or "", repr(r.seconds), r.model, r.finished_at]
        + [repr(r.volumes_ml[name]) if name in r.volumes_ml else "" for name in structures]
        + [_number((r.confidence or {}).get(name)) for name in scored]
        for r in results
    ]
    rows += [
        [f.case_id, f.status, f.source or "", repr(f.seconds), "", f.time] + [""] * len(header)
        for f in failures
    ]
    rows.sort(key=lambda row: row[0])
    writer.writerows(rows)
    return buffer.getvalue()


def _number(value: float | None) -> str:
    return "" if value is None else repr(value)


def failures_jsonl_text(failures: list[ScanFailure]) -> str:
    """One JSON object per line, by case id."""
    return "".join(json.dumps(f.to_json(), sort_keys=True) + "\n" for f in failures)


@contextlib.contextmanager
def _rebuild_lock(out_dir: Path) -> Iterator[None]:
    with open(out_dir / _LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as error:  # e.g. a network file system without locks
            logger.warning("%s: cannot lock (%s); rebuilding the summary unlocked", out_dir, error)
        yield  # closing the file releases the lock


def write_summary(out_dir: Path) -> SummaryFiles:
    """Rebuild ``summary.csv`` and ``failures.jsonl`` of ``out_dir`` from its records."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _rebuild_lock(out_dir):
        results, failures = read_results(out_dir), read_failures(out_dir)
        write_text_atomic(out_dir / SUMMARY_CSV, summary_csv_text(results, failures))
        write_text_atomic(out_dir / FAILURES_JSONL, failures_jsonl_text(failures))
    return SummaryFiles(
        csv=out_dir / SUMMARY_CSV,
        failures=out_dir / FAILURES_JSONL,
        done=len(results),
        failed=len(failures),
    )
