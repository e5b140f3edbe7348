"""Pull -> segment -> push against real Orthanc servers, through the ``medseg`` CLI.

The source PACS (DICOMweb and DIMSE, basic auth) holds a phantom CT series (JPEG 2000, a fake
patient name) and a scout series that the filter rules leave out. A small model is trained in
the test on that CT (tests/pacs/ct_model.py) and registered in a real MLflow server (alias
``champion``). ``medseg batch --from-pacs --to-pacs`` must bring back a DICOM SEG,
a TID 1500 volume report and an overlay picture into the source study, which the test reads
back with Orthanc's REST API; a second run sends nothing. A PACS that refuses the SEG, and one
that is down, leave failed delivery records and every result in place; the refused delivery
goes through once the PACS accepts it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import yaml
from pydicom.sr.codedict import codes
from pydicom.uid import SecondaryCaptureImageStorage, SegmentationStorage
from typer.testing import CliRunner, Result

from medseg.cli import app
from medseg.io.nifti import read_nifti
from tests.mlflow_server import mlflow_server  # noqa: F401
from tests.orthanc_server import OrthancServer, free_port, require_orthanc, running_orthanc
from tests.pacs.ct_model import CtModel, phantom_scan, train_ct_model
from tests.phantoms import stamp_dicom, write_phantom_dicom
from tests.seg_readback import rebuild_label_map

PATIENT_NAME, PATIENT_ID = "FAKE^PACSPATIENT", "FAKE-PACS-0042"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
PASSWORD = "s3cret"  # tests/orthanc_server.py's default user medseg


@dataclass(frozen=True)
class SourcePacs:
    """The source Orthanc and what was uploaded to it."""

    server: OrthancServer
    study_uid: str
    series_uid: str
    source_files: list[Path]  # the uploaded CT files
    scout_series_uid: str


@dataclass(frozen=True)
class FirstRun:
    """The first ``medseg batch --from-pacs --to-pacs`` run."""

    out: Path
    result: Result
    case_id: str


def _invoke(*arguments: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in arguments], catch_exceptions=False)


def _password_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pacs-password"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


def write_pacs_file(
    path: Path,
    server: OrthancServer,
    *,
    name: str,
    protocol: str = "dicomweb",
    password_file: Path | None = None,
    results: tuple[str, ...] = ("seg", "sr", "sc"),
    dicom_port: int | None = None,
    ca_bundle: Path | None = None,
) -> Path:
    """A PACS file for ``server``; retries are quick (2 attempts, no waiting)."""
    dicomweb: dict[str, Any] = {"url": server.dicomweb_url, "username": server.username}
    if password_file is not None:
        dicomweb["password_file"] = str(password_file)
    if ca_bundle is not None:
        dicomweb["ca_bundle"] = str(ca_bundle)
    settings = {
        "connection": {
            "name": name,
            "protocol": protocol,
            "dicomweb": dicomweb,
            "dimse": {
                "host": server.host,
                "port": dicom_port or server.dicom_port,
                "called_ae": server.aet,
                "timeout_seconds": 5,
            },
        },
        "filters": {
            "modalities": ["CT"],
            "exclude_series_description": "(?i)scout|topogram",
            "study_date": {"from": "1999-01-01"},  # the phantoms' 2000-01-01
            "min_instances": 10,
        },
        "results": list(results),
        "retry": {"attempts": 2, "initial_delay_seconds": 0, "max_delay_seconds": 0},
    }
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def ct_model(
    mlflow_server: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> CtModel:
    """The small CT model, registered in the real MLflow server with alias champion."""
    folder = tmp_path_factory.mktemp("ct-model")
    name = f"pacs-roundtrip-{folder.name}"
    return train_ct_model(
        phantom_scan(folder), folder, tracking_uri=mlflow_server, registered_model_name=name
    )


@pytest.fixture(scope="module")
def source_pacs(
    ct_model: CtModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SourcePacs]:
    """An Orthanc holding the CT the model learnt (a fake patient name) and a scout series."""
    require_orthanc()
    folder = tmp_path_factory.mktemp("uploads")
    ct_files = []
    for path in sorted(p for p in ct_model.series_dir.iterdir() if p.is_file()):
        ct_files.append(folder / "ct" / path.name)
        ct_files[-1].parent.mkdir(exist_ok=True)
        ct_files[-1].write_bytes(path.read_bytes())
    stamp_dicom(ct_files, PatientName=PATIENT_NAME, PatientID=PATIENT_ID, SeriesNumber=3)
    scout_files = write_phantom_dicom(folder / "scout", 8, patient_id="FAKE-SCOUT")
    stamp_dicom(scout_files, SeriesDescription="Topogram 0.6 T20f")
    first = pydicom.dcmread(ct_files[0], stop_before_pixels=True)
    scout = pydicom.dcmread(scout_files[0], stop_before_pixels=True)
    with running_orthanc(tmp_path_factory.mktemp("orthanc-source")) as server:
        answers = server.upload([*ct_files, *scout_files])
        assert {answer["Status"] for answer in answers} == {"Success"}
        yield SourcePacs(
            server=server,
            study_uid=str(first.StudyInstanceUID),
            series_uid=str(first.SeriesInstanceUID),
            source_files=ct_files,
            scout_series_uid=str(scout.SeriesInstanceUID),
        )


@pytest.fixture(scope="module")
def secrets_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("secrets")
    folder.chmod(0o700)
    return folder


@pytest.fixture(scope="module")
def first_run(
    ct_model: CtModel,
    source_pacs: SourcePacs,
    secrets_folder: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> FirstRun:
    """``medseg batch --from-pacs P --to-pacs P --model models:/NAME@champion`` (DICOMweb)."""
    folder = tmp_path_factory.mktemp("first-run")
    pacs_file = write_pacs_file(
        folder / "pacs.yaml",
        source_pacs.server,
        name="source",
        password_file=_password_file(secrets_folder),
    )
    out = folder / "out"
    result = _batch(ct_model, pacs_file, out, "--to-pacs", pacs_file)
    assert result.exit_code == 0, result.output
    [case_folder] = [p for p in out.iterdir() if (p / "result.json").is_file()]
    return FirstRun(out=out, result=result, case_id=case_folder.name)


def _batch(ct_model: CtModel, pacs_file: Path, out: Path, *extra: object) -> Result:
    assert ct_model.champion_uri is not None
    return _invoke(
        "batch",
        "--from-pacs",
        pacs_file,
        *extra,
        "--model",
        ct_model.champion_uri,
        "--out",
        out,
        "--tracking-uri",
        ct_model.tracking_uri,
    )


def _study_series(server: OrthancServer, study_uid: str) -> dict[str, list[dict[str, Any]]]:
    """Modality -> the study's series (expanded) with that modality."""
    [study] = [s for s in server.studies() if s["MainDicomTags"]["StudyInstanceUID"] == study_uid]
    by_modality: dict[str, list[dict[str, Any]]] = {}
    for series in server.series_of_study(study["ID"]):
        by_modality.setdefault(series["MainDicomTags"]["Modality"], []).append(series)
    return by_modality


def _stored(server: OrthancServer, series: dict[str, Any]) -> pydicom.Dataset:
    [instance] = server.instances_of_series(series["ID"])
    return pydicom.dcmread(BytesIO(server.instance_file(instance["ID"])))


def _deliveries(out: Path) -> list[dict[str, Any]]:
    listing = out / ".pacs" / "deliveries.jsonl"
    return [json.loads(line) for line in listing.read_text().splitlines()]


def _volumes(out: Path, case_id: str) -> dict[str, float]:
    return json.loads((out / case_id / "result.json").read_text())["volumes_ml"]


# --- the first run: pull, segment, push ---------------------------------------------------------


def test_batch_reports_the_series_pulled_left_out_and_delivered(first_run: FirstRun) -> None:
    output = first_run.result.output
    assert "pull: 1 series match, 1 pulled" in output
    assert "left out 1: series description matches exclude_series_description" in output
    assert "push: 1 delivered, 0 delivered before" in output
    [record] = _deliveries(first_run.out)
    assert (record["status"], record["destination"], record["attempts"]) == ("sent", "source", 1)
    assert record["objects"] == {"seg": "sent", "sr": "sent", "sc": "sent"}
    assert record["model"].startswith("models:/") and "@" not in record["model"]  # pinned


def test_seg_sr_and_overlay_arrive_in_the_source_study(
    first_run: FirstRun, source_pacs: SourcePacs
) -> None:
    series = _study_series(source_pacs.server, source_pacs.study_uid)
    assert sorted(series) == ["CT", "OT", "SEG", "SR"]
    assert len(series["CT"]) == 1  # the scout is in a study of its own
    seg, sr, sc = (_stored(source_pacs.server, series[m][0]) for m in ("SEG", "SR", "OT"))
    assert seg.SOPClassUID == SegmentationStorage
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR
    assert sc.SOPClassUID == SecondaryCaptureImageStorage
    source_number = int(series["CT"][0]["MainDicomTags"]["SeriesNumber"])
    assert source_number == 3
    assert (seg.SeriesNumber, sr.SeriesNumber, sc.SeriesNumber) == (
        source_number + 1000,
        source_number + 1001,
        source_number + 1002,
    )
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source_pacs.series_uid
    for dataset in (seg, sr, sc):
        assert dataset.StudyInstanceUID == source_pacs.study_uid
        assert (dataset.PatientName, dataset.PatientID) == (PATIENT_NAME, PATIENT_ID)
    assert (sc.Rows, sc.Columns) == (768, 1024)
    assert sc.SamplesPerPixel == 3


def test_seg_read_back_from_the_pacs_is_the_local_label_map(
    first_run: FirstRun, source_pacs: SourcePacs, ct_model: CtModel
) -> None:
    series = _study_series(source_pacs.server, source_pacs.study_uid)
    seg = _stored(source_pacs.server, series["SEG"][0])
    local = pydicom.dcmread(first_run.out / first_run.case_id / f"{first_run.case_id}_seg.dcm")
    assert seg.SOPInstanceUID == local.SOPInstanceUID
    labels = read_nifti(first_run.out / first_run.case_id / f"{first_run.case_id}.nii.gz")
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in source_pacs.source_files]
    rebuilt, covered = rebuild_label_map(
        seg, sources, ct_model.label_names, labels.shape, labels.affine_ras
    )
    assert covered.max() == 1
    assert np.array_equal(rebuilt, labels.array)
    reference = ct_model.reference.array
    for value, name in ct_model.label_names.items():
        if value == 0:
            continue
        overlap = np.logical_and(rebuilt == value, reference == value).sum()
        dice = 2 * overlap / ((rebuilt == value).sum() + (reference == value).sum())
        assert dice > 0.85, f"{name}: Dice {dice:.3f}"


def test_volume_report_read_back_from_the_pacs_holds_the_batch_volumes(
    first_run: FirstRun, source_pacs: SourcePacs, ct_model: CtModel
) -> None:
    series = _study_series(source_pacs.server, source_pacs.study_uid)
    seg = _stored(source_pacs.server, series["SEG"][0])
    sr = hd.sr.Comprehensive3DSR.from_dataset(_stored(source_pacs.server, series["SR"][0]))
    volumes = _volumes(first_run.out, first_run.case_id)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert {group.tracking_identifier for group in groups} == set(volumes)
    assert set(volumes) == {"liver", "kidney_left", "kidney_right", "spine"}
    for group in groups:
        (measurement,) = group.get_measurements(name=codes.SCT.Volume)
        expected = volumes[group.tracking_identifier]
        assert math.isclose(measurement.value, expected, abs_tol=1e-6)
        assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    reference = ct_model.reference
    for value, name in ct_model.label_names.items():
        if value:  # within 10% of the reference's volume (liver 50 mL, kidneys 7 mL, spine 34 mL)
            expected = (reference.array == value).sum() * reference.voxel_volume_ml
            assert math.isclose(volumes[name], expected, rel_tol=0.1), (name, expected)


def test_pulled_images_are_deleted_and_outputs_hold_no_patient_identifiers(
    first_run: FirstRun, source_pacs: SourcePacs
) -> None:
    incoming = first_run.out / ".pacs" / "incoming"
    assert incoming.is_dir() and not any(incoming.iterdir())
    assert incoming.stat().st_mode & 0o077 == 0
    text_files = [
        p for p in first_run.out.rglob("*") if p.suffix in {".json", ".jsonl", ".csv", ".txt"}
    ]
    assert text_files
    forbidden = (PATIENT_NAME, PATIENT_ID, source_pacs.series_uid, source_pacs.study_uid)
    for path in text_files:
        text = path.read_text()
        assert not [value for value in forbidden if value in text], path
    assert "FAKE" not in first_run.result.output


def test_second_run_sends_nothing_again(
    first_run: FirstRun, source_pacs: SourcePacs, ct_model: CtModel
) -> None:
    before = source_pacs.server.get_json("/statistics")["CountInstances"]
    pacs_file = first_run.out.parent / "pacs.yaml"
    result = _batch(ct_model, pacs_file, first_run.out, "--to-pacs", pacs_file)
    assert result.exit_code == 0, result.output
    assert "0 pulled, 0 already here, 1 already delivered" in result.output
    assert "push: 0 delivered, 1 delivered before" in result.output
    assert source_pacs.server.get_json("/statistics")["CountInstances"] == before
    [record] = _deliveries(first_run.out)
    assert (record["status"], record["attempts"]) == ("sent", 1)


# --- PACS that refuse or are down ---------------------------------------------------------------


@pytest.fixture(scope="module")
def dimse_run(
    ct_model: CtModel, source_pacs: SourcePacs, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """``medseg batch --from-pacs`` over DIMSE (C-FIND, C-GET), nothing pushed: OUT."""
    folder = tmp_path_factory.mktemp("dimse-run")
    pacs_file = write_pacs_file(
        folder / "pacs.yaml",
        source_pacs.server,
        name="source-dimse",
        protocol="dimse",
        password_file=_password_file(folder / "secrets"),
    )
    result = _batch(ct_model, pacs_file, folder / "out")
    assert result.exit_code == 0, result.output
    assert "pull: 1 series match, 1 pulled" in result.output
    return folder / "out"


def _case_files(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in out.rglob("*")
        if p.is_file() and ".pacs" not in p.parts
    }


def _archive_file(folder: Path, pacs: OrthancServer, secrets_folder: Path) -> Path:
    """The PACS file of the archive (DICOMweb over TLS, trusting the test CA)."""
    return write_pacs_file(
        folder / "archive.yaml",
        pacs,
        name="archive",
        password_file=_password_file(secrets_folder),
        ca_bundle=pacs.ca_certificate,
    )


def test_refused_seg_is_recorded_kept_and_delivered_once_the_pacs_accepts_it(
    dimse_run: Path, secrets_folder: Path, tmp_path: Path
) -> None:
    results_before = _case_files(dimse_run)
    archive_folder = tmp_path / "archive"
    refusing = {"tls": True, "refuse_sop_classes": [SegmentationStorage]}
    with running_orthanc(archive_folder, **refusing) as pacs:
        pacs_file = _archive_file(tmp_path, pacs, secrets_folder)
        refused = _invoke("pacs", "push", dimse_run, "--config", pacs_file)
        assert pacs.get_json("/statistics")["CountInstances"] == 0
    assert refused.exit_code == 1, refused.output
    assert "push: 0 delivered" in refused.output and "1 failed" in refused.output
    [record] = _deliveries(dimse_run)
    assert (record["status"], record["destination"], record["attempts"]) == (
        "failed",
        "archive",
        1,
    )
    # Orthanc answers a small STOW-RS whose instance its filter refuses with no instance
    # confirmed and no reason (a large, chunked one with HTTP 500: tests/pacs/test_dicomweb.py)
    [case_id] = [p.name for p in dimse_run.iterdir() if (p / "result.json").is_file()]
    refusal = f"archive: DICOMweb store refused {case_id}_seg.dcm (failure reason not given)"
    assert refusal in record["error"]
    after_refusal = _case_files(dimse_run)
    assert {name: after_refusal[name] for name in results_before} == results_before

    # The archive is fixed (same storage, the filter gone): the next push delivers.
    with running_orthanc(archive_folder, tls=True) as pacs:
        pacs_file = _archive_file(tmp_path, pacs, secrets_folder)
        delivered = _invoke("pacs", "push", dimse_run, "--config", pacs_file)
        modalities = sorted(s["MainDicomTags"]["Modality"] for s in pacs.get_json("/series?expand"))
    assert delivered.exit_code == 0, delivered.output
    assert modalities == ["OT", "SEG", "SR"]  # the overlay was drawn from the pulled CT
    [record] = _deliveries(dimse_run)
    assert (record["status"], record["attempts"]) == ("sent", 2)
    assert "error" not in record


def test_tls_without_the_ca_bundle_is_refused_with_a_clear_error(
    source_pacs: SourcePacs, secrets_folder: Path, tmp_path: Path
) -> None:
    with running_orthanc(tmp_path / "tls", tls=True) as pacs:
        trusted = write_pacs_file(
            tmp_path / "trusted.yaml",
            pacs,
            name="tls",
            password_file=_password_file(secrets_folder),
            ca_bundle=pacs.ca_certificate,
        )
        untrusted = write_pacs_file(
            tmp_path / "untrusted.yaml",
            pacs,
            name="tls",
            password_file=_password_file(secrets_folder),
        )
        answered = _invoke("pacs", "echo", "--config", trusted)
        failed = _invoke("pacs", "echo", "--config", untrusted)
    assert answered.exit_code == 0, answered.output
    assert "tls answers" in answered.output
    assert failed.exit_code == 2
    assert "certificate" in failed.output.lower()


def test_pacs_that_is_down_leaves_a_failure_record_and_the_results(
    first_run: FirstRun, source_pacs: SourcePacs, secrets_folder: Path, tmp_path: Path
) -> None:
    results_before = _case_files(first_run.out)
    pacs_file = write_pacs_file(
        tmp_path / "down.yaml",
        source_pacs.server,
        name="down",
        protocol="dimse",
        password_file=_password_file(secrets_folder),
        results=("seg",),
        dicom_port=free_port(),  # nothing listens there
    )
    result = _invoke("pacs", "push", first_run.out, "--config", pacs_file)
    assert result.exit_code == 1, result.output
    down = [r for r in _deliveries(first_run.out) if r["destination"] == "down"]
    assert [(r["status"], r["attempts"]) for r in down] == [("failed", 1)]
    assert "gave up after 2 attempts" in down[0]["error"]
    assert _case_files(first_run.out) == results_before
    echo = _invoke("pacs", "echo", "--config", pacs_file)
    assert echo.exit_code == 2
    assert "down" in echo.output


def test_query_lists_hashed_series_keys_unless_asked_for_uids(
    source_pacs: SourcePacs, secrets_folder: Path, tmp_path: Path
) -> None:
    pacs_file = write_pacs_file(
        tmp_path / "pacs.yaml",
        source_pacs.server,
        name="source",
        password_file=_password_file(secrets_folder),
    )
    hashed = _invoke("pacs", "query", "--config", pacs_file)
    shown = _invoke("pacs", "query", "--config", pacs_file, "--show-uids")
    assert hashed.exit_code == shown.exit_code == 0
    assert "1 of 2 series match" in hashed.output
    assert source_pacs.series_uid not in hashed.output
    assert source_pacs.series_uid in shown.output
    assert source_pacs.scout_series_uid not in shown.output


# --- RTSTRUCT as a fourth object ---------------------------------------------------------------


def test_rtstruct_is_reported_when_missing_then_sent_and_resent_only_when_missing(
    ct_model: CtModel, source_pacs: SourcePacs, secrets_folder: Path, tmp_path: Path
) -> None:
    password = _password_file(secrets_folder)
    source_file = write_pacs_file(
        tmp_path / "source.yaml", source_pacs.server, name="source", password_file=password
    )
    out = tmp_path / "out"
    assert _batch(ct_model, source_file, out).exit_code == 0  # segmented without --rtstruct
    with running_orthanc(tmp_path / "planning") as pacs:
        planning = write_pacs_file(
            tmp_path / "planning.yaml",
            pacs,
            name="planning",
            password_file=password,
            results=("seg", "rtstruct"),
        )
        missing = _invoke("pacs", "push", out, "--config", planning)
        assert missing.exit_code == 1, missing.output
        assert pacs.get_json("/statistics")["CountInstances"] == 0
        [record] = _deliveries(out)
        assert record["status"] == "failed" and "_rtstruct.dcm" in record["error"]

        # the PACS file asks for it: batch writes it (again, with --force) and sends it
        result = _batch(ct_model, source_file, out, "--to-pacs", planning, "--force")
        assert result.exit_code == 0, result.output
        [record] = _deliveries(out)
        assert record["objects"] == {"seg": "sent", "rtstruct": "sent"}
        by_modality = _study_series(pacs, source_pacs.study_uid)
        stored = _stored(pacs, by_modality["RTSTRUCT"][0])
        [case_id] = [p.name for p in out.iterdir() if (p / "result.json").is_file()]
        local = pydicom.dcmread(out / case_id / f"{case_id}_rtstruct.dcm")
        assert stored.SOPInstanceUID == local.SOPInstanceUID
        assert stored.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
        [frame] = stored.ReferencedFrameOfReferenceSequence
        series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
        assert series.SeriesInstanceUID == source_pacs.series_uid
        assert sorted(roi.ROIName for roi in stored.StructureSetROISequence) == sorted(
            name for name, ml in _volumes(out, case_id).items() if ml > 0
        )

        # an interrupted delivery (the RTSTRUCT lost, no record) sends only the RTSTRUCT
        pacs.request("DELETE", f"/series/{by_modality['RTSTRUCT'][0]['ID']}")
        for path in (out / ".pacs" / "deliveries").glob("*.json"):
            path.unlink()
        again = _invoke("pacs", "push", out, "--config", planning)
        assert again.exit_code == 0, again.output
        [record] = _deliveries(out)
        assert record["objects"] == {"seg": "already in PACS", "rtstruct": "sent"}
        assert len(_study_series(pacs, source_pacs.study_uid)["RTSTRUCT"]) == 1
