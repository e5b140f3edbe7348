"""Discovery never drops an input silently (issue 14, section 2): unreadable folders and files,
broken links, FIFOs, unreadable slices, symbolic links to folders, other files, and the
temporary files of an interrupted ingest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from medseg.ingest import OutcomeKind, ingest
from medseg.ingest.discovery import TEMPORARY_FILE
from medseg.ingest.walk import ALREADY_SEARCHED
from medseg.phi import hash_identifier
from tests.faults.commands import model_options, run_medseg, said
from tests.faults.inputs import readable_by_all, reading_denied, shared_folder
from tests.phantoms import write_phantom_dicom, write_phantom_nifti


def _failed(out: Path) -> dict[str, str]:
    report = json.loads((out / "ingest_report.json").read_text())
    return {
        o.get("source", o["case_id"]): o["reason"]
        for o in report["outcomes"]
        if o["kind"] == "failed"
    }


def test_an_unreadable_folder_is_reported_by_name_and_counted() -> None:
    with shared_folder() as shared:
        scans, out = shared / "scans", shared / "out"
        write_phantom_nifti(scans / "good.nii.gz")
        write_phantom_nifti(scans / "locked" / "inside.nii.gz", seed=1)
        readable_by_all(scans)
        out.mkdir()
        out.chmod(0o777)
        with reading_denied(scans / "locked"):
            result = run_medseg("ingest", scans, "--out", out, "--case-ids", "folder")
        assert result.exit_code == 1, result.output
        assert _failed(out) == {"locked": "cannot list the folder (Permission denied)"}
        assert "1 converted" in said(result) and "(1 unreadable files or folders)" in said(result)


def _break_slice(path: Path, how: str) -> None:
    if how == "broken link":
        path.unlink()
        path.symlink_to(path.with_name("gone.dcm"))
    else:
        path.chmod(0)


@pytest.mark.parametrize("how", ["broken link", "permission"])
@pytest.mark.parametrize("which", ["first", "middle"])
def test_an_unreadable_slice_is_reported_as_unreadable_not_as_missing(how: str, which: str) -> None:
    with shared_folder() as shared:
        scans, out = shared / "scans", shared / "out"
        slices = write_phantom_dicom(scans / "series")
        victim = slices[0] if which == "first" else slices[len(slices) // 2]
        write_phantom_nifti(scans / "good.nii.gz", seed=1)
        readable_by_all(scans)
        out.mkdir()
        out.chmod(0o777)
        _break_slice(victim, how)
        with reading_denied() if how == "broken link" else reading_denied(victim):
            report = ingest(scans, out, case_ids="folder")
        failed = {o.source: o.reason for o in report.of_kind(OutcomeKind.FAILED)}
        problem = "broken symbolic link" if how == "broken link" else "cannot be read"
        assert failed[f"series/{victim.name}"].startswith(problem)
        assert failed["series series 1"] == (
            f"1 file(s) beside its slices cannot be read ({victim.name}): they may be slices "
            "of this series, so it is not built"
        )
        assert not any("missing" in reason for reason in failed.values())
        assert [o.source for o in report.of_kind(OutcomeKind.CONVERTED)] == ["good.nii.gz"]


def test_with_hashed_ids_an_unreadable_slice_is_named_by_its_anonymous_id(tmp_path: Path) -> None:
    scans, out = tmp_path / "scans", tmp_path / "out"
    victim = write_phantom_dicom(scans / "DOE_JANE")[3]
    _break_slice(victim, "broken link")
    report = ingest(scans, out)
    anonymous = f"unreadable_{hash_identifier(f'DOE_JANE/{victim.name}')}"
    reasons = sorted(o.reason for o in report.of_kind(OutcomeKind.FAILED))
    assert reasons == [
        f"1 file(s) beside its slices cannot be read ({anonymous}): they may be slices of this "
        "series, so it is not built",
        "broken symbolic link (No such file or directory)",
    ]
    written = (out / "ingest_report.json").read_text()
    assert anonymous in written and "DOE_JANE" not in written and victim.stem not in written


def test_symbolic_links_to_folders_are_followed_once_and_loops_are_reported(tmp_path: Path) -> None:
    scans, elsewhere = tmp_path / "scans", tmp_path / "elsewhere"
    write_phantom_nifti(scans / "real" / "a.nii.gz")
    write_phantom_nifti(elsewhere / "b.nii.gz", seed=1)
    (scans / "linked").symlink_to(elsewhere)  # a folder kept outside the tree
    (scans / "real" / "loop").symlink_to(scans)  # back to an ancestor
    (scans / "again").symlink_to(scans / "real")  # a second way to the same folder
    out = tmp_path / "out"
    result = run_medseg("ingest", scans, "--out", out, "--case-ids", "folder")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "ingest_report.json").read_text())
    converted = sorted(o["source"] for o in report["outcomes"] if o["kind"] == "converted")
    assert converted == ["linked/b.nii.gz", "real/a.nii.gz"]
    assert report["links_not_followed"] == [
        {"folder": "again", "reason": ALREADY_SEARCHED},
        {"folder": "real/loop", "reason": ALREADY_SEARCHED},
    ]
    assert "2 links to folders searched already not followed" in said(result)


@pytest.fixture
def tree_with_dead_entries(tmp_path: Path) -> Path:
    """A good scan, a broken link named like a scan, a FIFO named like a DICOM file and a text
    file."""
    scans = tmp_path / "scans"
    write_phantom_nifti(scans / "good.nii.gz")
    (scans / "gone.nii.gz").symlink_to(tmp_path / "deleted.nii.gz")
    os.mkfifo(scans / "pipe.dcm")
    (scans / "notes.txt").write_text("not a scan")
    return scans


def test_broken_links_and_fifos_are_named_by_ingest_and_predict(
    tree_with_dead_entries: Path, phantom_model: str, tmp_path: Path
) -> None:
    ingested = tmp_path / "ingested"
    result = run_medseg("ingest", tree_with_dead_entries, "--out", ingested, "--case-ids", "folder")
    assert result.exit_code == 1, result.output
    assert _failed(ingested) == {
        "gone.nii.gz": "broken symbolic link (No such file or directory)",
        "pipe.dcm": "a FIFO, not a regular file: not read",
    }
    predicted = tmp_path / "predicted"
    result = run_medseg(
        "predict", tree_with_dead_entries, *model_options(phantom_model), "--out", predicted,
        "--case-ids", "folder",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    outcomes = json.loads((predicted / "predict_report.json").read_text())["outcomes"]
    assert {o["source"]: (o["ok"], o["error_type"]) for o in outcomes} == {
        "good.nii.gz": (True, ""),
        "gone.nii.gz": (False, "UnreadableInputError"),
        "pipe.dcm": (False, "UnreadableInputError"),
    }
    assert "1 segmented, 2 failed" in said(result)


def test_a_batch_records_broken_links_and_fifos_as_failures_with_hashed_names(
    tree_with_dead_entries: Path, phantom_model: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    model = model_options(phantom_model)
    result = run_medseg("batch", tree_with_dead_entries, *model, "--out", out)
    assert result.exit_code == 1, result.output
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert sorted((f["case_id"], f["error_type"], f["reason"]) for f in failures) == sorted(
        [
            (
                f"unreadable_{hash_identifier('gone.nii.gz')}",
                "UnreadableInputError",
                "broken symbolic link (No such file or directory)",
            ),
            (
                f"unreadable_{hash_identifier('pipe.dcm')}",
                "UnreadableInputError",
                "a FIFO, not a regular file: not read",
            ),
        ]
    )
    assert "1 done" in said(result) and "of which 2 unreadable" in said(result)
    assert "1 other files ignored" in said(result)
    discovery = json.loads((out / "discovery.json").read_text())
    assert discovery["other_files"] == [
        {
            "file": f"file_{hash_identifier('notes.txt')}",
            "reason": "neither DICOM nor a volume file format medseg reads",
        }
    ]


@pytest.mark.parametrize(
    ("case_ids", "names"),
    [
        ("folder", ["DOE/report.pdf", "notes.txt"]),
        ("hash", [f"file_{hash_identifier(p)}" for p in ("DOE/report.pdf", "notes.txt")]),
    ],
)
def test_files_that_are_not_scans_are_named_in_the_ingest_report(
    case_ids: str, names: list[str], tmp_path: Path
) -> None:
    scans = tmp_path / "scans"
    write_phantom_nifti(scans / "good.nii.gz")
    (scans / "notes.txt").write_text("not a scan")
    (scans / "DOE").mkdir()
    (scans / "DOE" / "report.pdf").write_bytes(b"%PDF-1.4")
    result = run_medseg("ingest", scans, "--out", tmp_path / "out", "--case-ids", case_ids)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "ingest_report.json").read_text())
    assert report["other_files"] == [
        {"file": name, "reason": "neither DICOM nor a volume file format medseg reads"}
        for name in names  # by path
    ]
    assert "2 other files ignored" in said(result)


def test_an_interrupted_ingest_leaves_no_file_a_later_run_takes_for_a_scan(tmp_path: Path) -> None:
    scans, out = tmp_path / "scans", tmp_path / "out"
    write_phantom_nifti(scans / "good.nii.gz")
    assert ingest(scans, out, case_ids="folder").exit_code == 0
    # What a kill during the write of a volume leaves: the empty file mkstemp created.
    leftover = out / "images" / ".tmp-good.nii.gz-k2j4h1x9.nii.gz"
    leftover.touch()
    again_out = tmp_path / "again"
    again = run_medseg("ingest", out / "images", "--out", again_out, "--case-ids", "folder")
    assert again.exit_code == 0, again.output
    report = json.loads((again_out / "ingest_report.json").read_text())
    assert report["counts"] == {"converted": 1}
    assert {"file": leftover.name, "reason": TEMPORARY_FILE} in report["other_files"]
    assert ingest(scans, out, case_ids="folder").exit_code == 0
    assert not leftover.exists()  # the next ingest into OUT removes it
