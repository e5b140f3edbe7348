"""The output layout: atomic publication, leftovers of killed runs, rebuilt summaries."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from medseg.batch import layout
from medseg.batch.records import ScanFailure, ScanResult, model_reference
from medseg.batch.summary import write_summary
from medseg.phi import redact_scan


def _result(case_id: str, volumes: dict[str, float]) -> ScanResult:
    return ScanResult(
        case_id=case_id,
        seconds=1.5,
        outputs=[f"{case_id}.nii.gz"],
        structures=list(volumes),
        volumes_ml=volumes,
        model="models:/hippocampus/3",
        **model_reference("models:/hippocampus/3"),
    )


def _finish(out_dir: Path, result: ScanResult, *, replace: bool = False) -> bool:
    staging = layout.new_staging_folder(out_dir, result.case_id)
    (staging / result.outputs[0]).write_bytes(b"labels")
    layout.write_result(staging, result)
    return layout.publish(staging, out_dir, result.case_id, replace=replace)


def test_a_published_case_is_complete_and_staging_is_empty(tmp_path: Path) -> None:
    assert not layout.is_complete(tmp_path, "mr_1a")
    assert _finish(tmp_path, _result("mr_1a", {"anterior": 1.0}))
    assert layout.is_complete(tmp_path, "mr_1a")
    assert sorted(p.name for p in (tmp_path / "mr_1a").iterdir()) == ["mr_1a.nii.gz", "result.json"]
    assert list((tmp_path / ".staging").iterdir()) == []
    saved = layout.read_result(tmp_path, "mr_1a")
    assert (
        saved is not None and saved.model_version == "3" and saved.volumes_ml == {"anterior": 1.0}
    )


def test_a_complete_case_is_kept_unless_replaced(tmp_path: Path) -> None:
    _finish(tmp_path, _result("mr_1a", {"anterior": 1.0}))
    assert not _finish(tmp_path, _result("mr_1a", {"anterior": 2.0}))  # someone else's is kept
    assert layout.read_result(tmp_path, "mr_1a").volumes_ml == {"anterior": 1.0}
    assert _finish(tmp_path, _result("mr_1a", {"anterior": 3.0}), replace=True)
    assert layout.read_result(tmp_path, "mr_1a").volumes_ml == {"anterior": 3.0}
    assert list((tmp_path / ".staging").iterdir()) == []


def test_only_the_cases_own_leftovers_are_removed(tmp_path: Path) -> None:
    mine = layout.new_staging_folder(tmp_path, "mr_1a")
    other_case = layout.new_staging_folder(tmp_path, "mr_1a-2")  # a split series' id
    other_pid = tmp_path / ".staging" / "mr_1a-2-4242-0badcafe"
    other_pid.mkdir()
    assert layout.remove_staging_leftovers(tmp_path, "mr_1a") == 1
    assert not mine.exists() and other_case.exists() and other_pid.exists()
    assert layout.remove_staging_leftovers(tmp_path, "mr_1a-2") == 2


def test_the_summary_is_rebuilt_from_the_records_and_drops_stale_failures(
    tmp_path: Path,
) -> None:
    _finish(tmp_path, _result("mr_b", {"anterior": 1.25, "posterior": 0.5}))
    _finish(tmp_path, _result("mr_a", {"anterior": 2.0, "posterior": 0.125}))
    layout.write_failure(tmp_path, ScanFailure("mr_c", reason="bad", error_type="NiftiError"))
    # a run killed after publishing mr_a but before forgetting its earlier failure:
    layout.write_failure(tmp_path, ScanFailure("mr_a", reason="old", error_type="X"))
    files = write_summary(tmp_path)
    assert (files.done, files.failed) == (2, 1)
    rows = list(csv.DictReader(files.csv.open()))
    assert [(r["case_id"], r["status"]) for r in rows] == [
        ("mr_a", "done"),
        ("mr_b", "done"),
        ("mr_c", "failed"),
    ]
    assert list(rows[0])[-2:] == ["anterior_ml", "posterior_ml"]
    assert float(rows[1]["anterior_ml"]) == 1.25 and rows[2]["anterior_ml"] == ""
    failures = [json.loads(line) for line in files.failures.read_text().splitlines()]
    assert [(f["case_id"], f["reason"], f["error_type"]) for f in failures] == [
        ("mr_c", "bad", "NiftiError")
    ]


def test_failure_reasons_lose_the_paths_of_the_scan(tmp_path: Path) -> None:
    root = tmp_path / "inbox"
    scan = root / "DOE^JANE" / "ct" / "t1.nii.gz"
    reason = f"{scan}: cannot read; see DOE^JANE/ct (an unexpected error)"
    redacted = redact_scan(reason, source="DOE^JANE/ct/t1.nii.gz", files=[scan], root=root)
    assert redacted == "<scan>: cannot read; see <scan> (an unexpected error)"
