"""Patient identifiers never reach what medseg writes unless ``--case-ids folder`` is asked
(issue 14, section 4).

Patient names and IDs sit in folder and file names and in the DICOM tags (patient name, ID,
birth date, other IDs, institution, referring physician, accession number). ``ingest``,
``predict``, ``batch``, ``evaluate`` and a pipeline run as subprocesses (at the default log
level and with ``--verbose``) with a real SQLite MLflow store; then every file they wrote
(NIfTI and archives decompressed, JSON, CSV, HTML, the MLflow database and artifacts) and
everything they printed is searched for every identifier. Only DICOM SEG, SR and secondary
capture objects may hold them: the standard requires the patient module there.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from medseg.ingest.discovery import discover_scans
from medseg.io.nifti import write_nifti
from medseg.preprocess.plan import Plan
from medseg.tracking.runs import RunTracker
from tests.faults.commands import model_options
from tests.faults.conftest import PhantomPlan
from tests.faults.inputs import write_phantom_with
from tests.packaged_model import log_tiny_unet
from tests.phantoms import PHANTOM_LABELS, small_phantom, write_phantom_dicom, write_phantom_nifti

JANE, JOHN = "DOE_JANE_PHI123456", "SMITH_JOHN_PHI654321"  # folders named after patients
DICOM_PHI = {
    "PatientName": "PHIDOE^PHIJANE",
    "PatientID": "PHI123456",
    "PatientBirthDate": "19610203",
    "OtherPatientIDs": "PHIOTHER789",
    "InstitutionName": "PHI GENERAL HOSPITAL",
    "ReferringPhysicianName": "PHIREFERRER^DOC",
    "AccessionNumber": "PHIACC4242",
}
IDENTIFIERS = [
    "DOE_JANE",
    "SMITH_JOHN",
    "PHI123456",
    "PHI654321",
    "PHIDOE",
    "PHIJANE",
    "19610203",
    "PHIOTHER789",
    "PHI GENERAL HOSPITAL",
    "PHIREFERRER",
    "PHIACC4242",
]
PATIENT_MODULE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
}


def _write_tree(data: Path) -> None:
    """Scans (a DICOM series, NIfTI files: good, truncated, with a NaN, a broken link, a text
    file) in folders named after patients, and label maps named by the anonymous case ids."""
    series = data / "scans" / JANE / "CT_abdomen"
    for index, path in enumerate(write_phantom_dicom(series, seed=0)):
        dataset = pydicom.dcmread(path)
        for keyword, value in DICOM_PHI.items():
            setattr(dataset, keyword, value)
        dataset.SeriesDescription = "CT PHIDOE abdomen"
        path.unlink()
        dataset.save_as(series / f"DOE_JANE_{index:04d}.dcm")
    john = data / "scans" / JOHN
    write_phantom_nifti(john / "SMITH_JOHN_ct.nii.gz", seed=1)
    (john / "notes_PHI654321.txt").write_text("referral letter")
    jane = data / "scans" / JANE
    (jane / "DOE_JANE_broken.nii.gz").write_bytes(b"\x1f\x8b truncated")
    write_phantom_with(jane / "DOE_JANE_nan.nii.gz", nan=1)
    (jane / "DOE_JANE_gone.nii.gz").symlink_to(data / "deleted.nii.gz")
    for task in discover_scans(data / "scans").tasks:
        seed = 0 if task.series is not None else 1
        if task.series is not None or task.source.endswith("SMITH_JOHN_ct.nii.gz"):
            write_nifti(small_phantom(seed)[1], data / "labels" / f"{task.case_id}.nii.gz")
    names = {str(value): name for value, name in PHANTOM_LABELS.items()}
    (data / "label_names.json").write_text(json.dumps({"labels": names}))


PIPELINE = """
name: phi
experiment: phi-pipeline
stages:
  - {{stage: ingest, input: scans, labels: labels, label_names: label_names.json}}
  - {{stage: predict, input: scans, model: "{model}"}}
  - {{stage: evaluate, references: labels}}
"""


def _medseg(work: Path, name: str, *arguments: object, verbose: bool) -> int:
    """Run ``medseg`` in ``work``; its stdout and stderr go to ``work/logs/<name>.txt``."""
    command = [sys.executable, "-m", "medseg", *(["--verbose"] if verbose else [])]
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    with open(logs / f"{name}.txt", "w") as log:
        completed = subprocess.run(
            [*command, *(str(a) for a in arguments)],
            cwd=work,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ | {"COLUMNS": "400"},
            timeout=900,
        )
    return completed.returncode


@pytest.fixture
def phi_work(phantom_plan: PhantomPlan, tmp_path: Path) -> Path:
    """Every command over the tree; returns the folder of every output, the MLflow store and
    the captured console output (minutes: one test uses it, so it runs once whatever the
    distribution of tests over pytest-xdist workers)."""
    root = tmp_path
    data, work = root / "data", root / "work"
    _write_tree(data)
    work.mkdir()
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    plan = Plan.load(phantom_plan.plan)
    model = log_tiny_unet(plan, tracking, experiment="phi-model").info.model_uri
    with RunTracker(tracking_uri=tracking).start(
        experiment="phi-eval", run_name="e", tags={}
    ) as run:
        evaluation_run = run.run_id
    scans, model_options = data / "scans", ["--model", model, "--tracking-uri", tracking]
    for verbose in (False, True):  # a log line may appear only at one level
        suffix = "-verbose" if verbose else ""
        ingest = ["ingest", scans, "--out", work / f"ingest{suffix}", "--labels", data / "labels"]
        assert _medseg(work, f"ingest{suffix}", *ingest, verbose=verbose) == 1
        predict = ["predict", scans, *model_options, "--out", work / f"predict{suffix}"]
        assert _medseg(work, f"predict{suffix}", *predict, "--probabilities", verbose=verbose) == 1
    batch = ["batch", scans, *model_options, "--out", work / "batch", "--experiment", "phi-batch"]
    assert _medseg(work, "batch", *batch, verbose=True) == 1
    evaluate = [
        "evaluate", work / "predict", data / "labels", "--out", work / "evaluate",
        "--labels", data / "label_names.json", "--images", work / "ingest" / "images",
        "--run-id", evaluation_run, "--tracking-uri", tracking,
    ]  # fmt: skip
    assert _medseg(work, "evaluate", *evaluate, verbose=True) == 0
    (root / "phi.yaml").write_text(PIPELINE.format(model=model))
    pipeline = ["run", root / "phi.yaml", "--data-root", data, "--work-dir", work / "pipeline"]
    assert _medseg(work, "pipeline", *pipeline, "--tracking-uri", tracking, verbose=True) == 1
    return work


def _contents(path: Path) -> Iterator[bytes]:
    """The bytes of ``path``, and of what it holds when it is gzip- or zip-compressed."""
    data = path.read_bytes()
    yield data
    if data[:2] == b"\x1f\x8b":
        yield gzip.decompress(data)
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for member in archive.namelist():
                yield member.encode()
                yield archive.read(member)


def _requires_patient_module(path: Path) -> bool:
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # not DICOM
        return False
    return str(dataset.get("SOPClassUID", "")) in PATIENT_MODULE_CLASSES


def _leaks(path: Path, relative: str) -> list[str]:
    found = [f"{s} in the name" for s in IDENTIFIERS if s.lower() in relative.lower()]
    for content in _contents(path):
        lowered = content.lower()
        found += [s for s in IDENTIFIERS if s.lower().encode() in lowered]
    return found


def _search(work: Path) -> tuple[dict[str, list[str]], int, list[Path]]:
    """Identifiers found per file (name relative to ``work``), files searched, and the DICOM
    objects that must carry the patient module (not searched)."""
    leaks, searched, patient_objects = {}, 0, []
    for path in sorted(work.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        if _requires_patient_module(path):
            patient_objects.append(path)
            continue
        searched += 1
        relative = str(path.relative_to(work))
        if found := _leaks(path, relative):
            leaks[relative] = sorted(set(found))
    return leaks, searched, patient_objects


@pytest.mark.slow  # minutes of commands: the serial slow suite, so make test stays < 15 min
def test_no_patient_identifier_reaches_an_output_a_log_or_mlflow(phi_work: Path) -> None:
    work = phi_work
    # every command did its work on the two good scans: the search is not vacuous
    assert len(list((work / "ingest" / "images").glob("*.nii.gz"))) == 2
    assert len(list((work / "ingest" / "labels").glob("*.nii.gz"))) == 2
    assert len(list((work / "predict").glob("*.nii.gz"))) == 2
    assert len(list((work / "batch").glob("*/result.json"))) == 2
    for report in (work / "evaluate", work / "pipeline" / "evaluate" / "report"):
        assert json.loads((report / "summary.json").read_text())["cases"] == 2
    logs = {p.name for p in (work / "logs").iterdir()}
    assert logs == {
        "ingest.txt", "ingest-verbose.txt", "predict.txt", "predict-verbose.txt", "batch.txt",
        "evaluate.txt", "pipeline.txt",
    }  # fmt: skip

    leaks, searched, patient_objects = _search(work)
    assert not leaks, json.dumps(leaks, indent=1)
    assert searched > 100 and (work / "mlflow.db").is_file() and (work / "artifacts").is_dir()

    # the failures are reported by anonymous ids, without paths
    report = json.loads((work / "predict" / "predict_report.json").read_text())
    failed = sorted(o["error_type"] for o in report["outcomes"] if not o["ok"])
    assert failed == ["NiftiError", "NonFiniteVoxelsError", "UnreadableInputError"]
    assert all(o["source"] is None for o in report["outcomes"])
    assert [entry["file"][:5] for entry in report["other_files"]] == ["file_"]
    ingest_report = json.loads((work / "ingest" / "ingest_report.json").read_text())
    assert ingest_report["counts"] == {"converted": 2, "failed": 3}
    assert not any("source" in outcome for outcome in ingest_report["outcomes"])

    # One DICOM SEG per run that segments the series (predict twice, batch, the pipeline),
    # carrying the patient module as the standard requires.
    assert len(patient_objects) == 4
    for seg in patient_objects:
        dataset = pydicom.dcmread(seg, stop_before_pixels=True)
        assert str(dataset.PatientName) == DICOM_PHI["PatientName"]
        assert dataset.PatientID == DICOM_PHI["PatientID"]


def test_folder_case_ids_show_the_names_the_user_chose(phantom_model: str, tmp_path: Path) -> None:
    """The search of the test above finds folder names where they are allowed."""
    _write_tree(tmp_path / "data")
    out = tmp_path / "predict"
    scans, model = tmp_path / "data" / "scans", model_options(phantom_model)
    arguments = ["predict", scans, *model, "--out", out, "--case-ids", "folder"]
    assert _medseg(tmp_path, "folder", *arguments, verbose=False) == 1
    leaks, _, _ = _search(out)
    assert leaks["predict_report.json"] == ["DOE_JANE", "PHI123456", "PHI654321", "SMITH_JOHN"]
    assert leaks["SMITH_JOHN_ct.nii.gz"] == ["SMITH_JOHN in the name"]
