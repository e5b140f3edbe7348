"""The batch output folder, and how a scan's outputs appear in it atomically.

::

    OUT_DIR/<case_id>/                 outputs of one finished scan, result.json last
                                       (label map <case_id>.nii.gz, .nrrd, .mha...)
    OUT_DIR/.staging/<case_id>-<pid>-<random>/   a scan being written (or a killed leftover)
    OUT_DIR/.failures/<case_id>.json   the last failure of a scan, removed once it succeeds
    OUT_DIR/.locks/<case_id>.lock      held by the process working on the scan (batch.locks)
    OUT_DIR/summary.csv, failures.jsonl   regenerated from the above (``medseg.batch.summary``)

A scan is written into its own staging folder, finished with ``result.json``, then the folder
is renamed onto ``OUT_DIR/<case_id>`` (one ``rename``, atomic on POSIX file systems). So
``OUT_DIR/<case_id>/result.json`` exists if and only if the scan is complete, whenever the
process is killed. Staging folders are named ``<case_id>-<pid>-<8 hex digits>``; the last two
fields never contain ``-``, which tells a case's leftovers apart from those of another case
whose id starts the same (``mr_1a`` and ``mr_1a-2``). Only the holder of a case's lock
removes its leftovers: other runs may be writing into the same OUT_DIR at the same time.

A failure record stays until its scan succeeds: after deleting or replacing a corrupt input,
delete its ``.failures/<case_id>.json`` too (then ``medseg batch-summary``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
from pathlib import Path

from medseg.batch.locks import case_lock
from medseg.batch.records import ScanFailure, ScanResult
from medseg.io.atomic import write_json_atomic
from medseg.io.formats import output_name

logger = logging.getLogger(__name__)

RESULT_FILE = "result.json"
STAGING_FOLDER = ".staging"
FAILURES_FOLDER = ".failures"


def case_folder(out_dir: Path, case_id: str) -> Path:
    """Where the finished outputs of ``case_id`` live."""
    return Path(out_dir) / case_id


def is_complete(out_dir: Path, case_id: str) -> bool:
    """Whether ``case_id`` has a finished output folder."""
    return (case_folder(out_dir, case_id) / RESULT_FILE).is_file()


def has_label_map(out_dir: Path, case_id: str, output_format: str) -> bool:
    """Whether the output folder of ``case_id`` holds its label map in ``output_format``."""
    return (case_folder(out_dir, case_id) / output_name(case_id, output_format)).is_file()


def new_staging_folder(out_dir: Path, case_id: str) -> Path:
    """A fresh, empty staging folder for ``case_id`` (name unique to this process and call)."""
    folder = Path(out_dir) / STAGING_FOLDER / f"{case_id}-{os.getpid()}-{secrets.token_hex(4)}"
    folder.mkdir(parents=True)
    return folder


def _staging_case_id(name: str) -> str | None:
    """The case id of a staging folder's name ``<case_id>-<pid>-<8 hex>``, else None."""
    parts = name.rsplit("-", 2)
    if len(parts) == 3 and parts[1].isdigit() and re.fullmatch(r"[0-9a-f]{8}", parts[2]):
        return parts[0]
    return None


def remove_staging_leftovers(out_dir: Path, case_id: str) -> int:
    """Delete the staging folders of ``case_id`` (a killed run's); returns how many.

    Call it holding the case's lock.
    """
    staging = Path(out_dir) / STAGING_FOLDER
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for folder in staging.iterdir():
            if _staging_case_id(folder.name) == case_id:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
    return removed


def remove_abandoned_staging(out_dir: Path) -> int:
    """Delete the staging folders of every case that no process is working on (a stopped
    run's); returns how many."""
    staging = Path(out_dir) / STAGING_FOLDER
    try:
        case_ids = {_staging_case_id(folder.name) for folder in staging.iterdir()}
    except FileNotFoundError:
        return 0
    removed = 0
    for case_id in sorted(filter(None, case_ids)):
        with case_lock(out_dir, case_id, wait=False) as held:
            if held:
                removed += remove_staging_leftovers(out_dir, case_id)
    return removed


def publish(staging: Path, out_dir: Path, case_id: str, *, replace: bool) -> bool:
    """Rename the finished ``staging`` folder onto ``OUT_DIR/<case_id>``.

    An existing complete output is kept (and ``staging`` dropped, returning False) unless
    ``replace``; an incomplete one (not made by a batch) is always replaced. Replacing moves
    the old folder back into staging first: a kill between the two renames leaves the case
    incomplete, to be redone, never half-old half-new.
    """
    target = case_folder(out_dir, case_id)
    try:
        os.rename(staging, target)
        return True
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise
    if is_complete(out_dir, case_id) and not replace:  # another process finished it first
        shutil.rmtree(staging, ignore_errors=True)
        return False
    old = new_staging_folder(out_dir, case_id)
    old.rmdir()
    os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old, ignore_errors=True)
    return True


def write_result(staging: Path, result: ScanResult) -> None:
    """Finish a staging folder with its ``result.json`` (atomically: it marks completeness)."""
    write_json_atomic(Path(staging) / RESULT_FILE, result.to_json())


def _failure_path(out_dir: Path, case_id: str) -> Path:
    return Path(out_dir) / FAILURES_FOLDER / f"{case_id}.json"


def write_failure(out_dir: Path, failure: ScanFailure) -> None:
    """Record (atomically) that ``failure.case_id`` failed, replacing an older record."""
    write_json_atomic(_failure_path(out_dir, failure.case_id), failure.to_json())


def clear_failure(out_dir: Path, case_id: str) -> None:
    """Forget an earlier failure of ``case_id`` (it has now succeeded)."""
    _failure_path(out_dir, case_id).unlink(missing_ok=True)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        logger.warning("%s: unreadable batch record, left out: %s", path, error)
        return None


def read_result(out_dir: Path, case_id: str) -> ScanResult | None:
    """The ``result.json`` of a finished scan, or None."""
    path = case_folder(out_dir, case_id) / RESULT_FILE
    payload = _read_json(path) if path.is_file() else None
    return ScanResult.from_json(payload) if payload is not None else None


def read_results(out_dir: Path) -> list[ScanResult]:
    """Every finished scan in ``out_dir``, by case id."""
    results = []
    for path in sorted(Path(out_dir).glob(f"[!.]*/{RESULT_FILE}")):
        if (payload := _read_json(path)) is not None:
            results.append(ScanResult.from_json(payload))
    return sorted(results, key=lambda r: r.case_id)


def read_failures(out_dir: Path) -> list[ScanFailure]:
    """Every recorded failure of a scan that is not complete, by case id.

    A failure record beside a complete output (a run killed between the two) is stale and
    is left out.
    """
    failures = []
    for path in sorted((Path(out_dir) / FAILURES_FOLDER).glob("*.json")):
        if is_complete(out_dir, path.stem):
            continue
        if (payload := _read_json(path)) is not None:
            failures.append(ScanFailure.from_json(payload))
    return sorted(failures, key=lambda f: f.case_id)
