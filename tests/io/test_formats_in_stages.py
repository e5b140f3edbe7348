"""NRRD and MetaImage inputs through the stages that read user files: ingest (discovery and
labels), import-dataset, evaluate pairing; and a format registered by a test picked up by
discovery (the worked example of an input format in docs/extending.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.datasets import import_dataset
from medseg.errors import DatasetLayoutError, InputFileError
from medseg.evaluate.pairing import pair_label_maps
from medseg.evaluate.stage import evaluate_pairing
from medseg.ingest import OutcomeKind, ingest
from medseg.ingest.case_ids import CaseIdScheme
from medseg.ingest.discovery import discover_scans
from medseg.io.formats import (
    read_volume,
    register_format,
    unregister_format,
    write_volume,
)
from medseg.io.nifti import read_nifti
from medseg.manifest import read_manifest
from medseg.phi import hash_identifier
from medseg.volume import Volume
from tests.doc_examples import example_module
from tests.phantoms import PHANTOM_LABELS, small_phantom, write_phantom_dataset_json

FORMATS = {"nifti": ".nii.gz", "nrrd": ".nrrd", "nhdr": ".nhdr", "mha": ".mha", "mhd": ".mhd"}


def _same(volume: Volume, expected: Volume) -> None:
    assert volume.array.dtype == expected.array.dtype
    np.testing.assert_array_equal(volume.array, expected.array)
    np.testing.assert_allclose(volume.affine_ras, expected.affine_ras, atol=1e-4)


def test_ingest_converts_the_same_scan_in_every_format_to_the_same_volume(tmp_path):
    """Each file of a folder holding one phantom in five forms becomes a case; the data files
    of the detached headers belong to their scans, not to the files that are not scans."""
    ct, labels = small_phantom(4)
    scans, label_dir = tmp_path / "scans", tmp_path / "labels"
    for name, suffix in FORMATS.items():
        write_volume(ct, scans / f"{name}{suffix}")
        write_volume(labels, label_dir / f"{name}{suffix}")
    report = ingest(scans, tmp_path / "out", case_ids=CaseIdScheme.FOLDER, labels_dir=label_dir)
    converted = {o.case_id: o for o in report.of_kind(OutcomeKind.CONVERTED)}
    assert sorted(converted) == sorted(FORMATS)
    assert converted["nhdr"].files == converted["mhd"].files == 2  # header and data file
    assert converted["nrrd"].files == converted["nifti"].files == 1
    assert report.discovery["other_files"] == []
    reference = read_nifti(tmp_path / "out/images/nifti.nii.gz")
    for name in FORMATS:
        _same(read_nifti(tmp_path / f"out/images/{name}.nii.gz"), reference)
        _same(read_nifti(tmp_path / f"out/labels/{name}.nii.gz"), labels)


def test_hashed_case_ids_name_the_format(tmp_path):
    ct, _ = small_phantom(4)
    for name, suffix in FORMATS.items():
        write_volume(ct, tmp_path / f"{name}{suffix}")
    found = discover_scans(tmp_path)
    prefixes = {"nhdr": "nrrd", "mhd": "mha"}
    assert sorted(task.case_id for task in found.tasks) == sorted(
        f"{prefixes.get(name, name)}_{hash_identifier(f'{name}{suffix}')}"
        for name, suffix in FORMATS.items()
    )
    ingested = tmp_path / "again" / f"{found.tasks[0].case_id}.mha"  # an id medseg gave keeps
    write_volume(ct, ingested)
    assert [t.case_id for t in discover_scans(ingested).tasks] == [ingested.name[:-4]]


@pytest.mark.parametrize("case_ids", [CaseIdScheme.FOLDER, CaseIdScheme.HASH])
def test_a_detached_header_without_its_data_file_fails_naming_it(tmp_path, case_ids):
    ct, _ = small_phantom(4)
    scans = tmp_path / "scans"
    write_volume(ct, scans / "DOE_JOHN.nhdr")
    write_volume(ct, scans / "fine.mha")
    (scans / "DOE_JOHN.raw.gz").unlink()
    report = ingest(scans, tmp_path / "out", case_ids=case_ids)
    assert len(report.of_kind(OutcomeKind.CONVERTED)) == 1
    [failed] = report.of_kind(OutcomeKind.FAILED)
    if case_ids is CaseIdScheme.FOLDER:
        assert failed.reason.startswith("its data file DOE_JOHN.raw.gz is missing (looked for ")
    else:
        assert "DOE" not in failed.reason and "data file" in failed.reason
        assert failed.case_id == f"nrrd_{hash_identifier('DOE_JOHN.nhdr')}"


@pytest.mark.parametrize("label_suffix", [".nrrd", ".mha", ".nhdr"])
def test_import_dataset_takes_nrrd_and_metaimage_label_maps(tmp_path, label_suffix):
    dataset = tmp_path / "flat"
    for seed in (1, 2, 3):
        ct, labels = small_phantom(seed)
        write_volume(ct, dataset / "images" / f"case_{seed}.nii.gz")
        write_volume(labels, dataset / "labels" / f"case_{seed}{label_suffix}")
    write_phantom_dataset_json(dataset)
    manifest = tmp_path / "m.jsonl"
    report = import_dataset(dataset, manifest_path=manifest)
    assert report.rejected == [] and report.orphans == []
    records = read_manifest(manifest)
    assert [r.label for r in records] == [f"flat/labels/case_{s}{label_suffix}" for s in (1, 2, 3)]
    assert set(records[0].extra["label_values"]) <= set(PHANTOM_LABELS)
    for record in records:
        label = read_volume(tmp_path / record.label)
        _same(label, small_phantom(int(record.case_id[-1]))[1])


def test_import_dataset_refuses_one_case_in_two_formats(tmp_path):
    dataset = tmp_path / "flat"
    ct, labels = small_phantom(1)
    write_volume(ct, dataset / "images/case_1.nii.gz")
    write_volume(labels, dataset / "labels/case_1.nii.gz")
    write_volume(labels, dataset / "labels/case_1.nrrd")
    with pytest.raises(DatasetLayoutError, match=r"both case_1.nii.gz and case_1.nrrd exist"):
        import_dataset(dataset, manifest_path=tmp_path / "m.jsonl")


def test_evaluate_pairs_nrrd_and_metaimage_label_maps_with_nifti(tmp_path):
    predictions, references = tmp_path / "pred", tmp_path / "ref"
    for seed, (predicted, reference) in enumerate(
        [(".nii.gz", ".nrrd"), (".mha", ".nii.gz"), (".nhdr", ".mhd")]
    ):
        _, labels = small_phantom(seed)
        write_volume(labels, predictions / f"case_{seed}{predicted}")
        write_volume(labels, references / f"case_{seed}{reference}")
    write_volume(small_phantom(9)[1], predictions / "batch_case" / "batch_case.nrrd")
    write_volume(small_phantom(9)[1], references / "batch_case.mha")
    pairing = pair_label_maps(predictions, references)
    assert [case for case, _, _ in pairing.pairs] == ["batch_case", "case_0", "case_1", "case_2"]
    assert pairing.missing_prediction == pairing.missing_reference == []
    names = {value: f"label_{value}" for value in PHANTOM_LABELS}
    report = evaluate_pairing(pairing, label_names=names)
    assert report.failed == {}
    for case in report.cases:
        assert all(metrics["dice"] == 1.0 for metrics in case.metrics.values()), case.case_id


def test_evaluate_refuses_two_label_maps_of_one_case(tmp_path):
    _, labels = small_phantom(1)
    write_volume(labels, tmp_path / "ref/case_1.nii.gz")
    write_volume(labels, tmp_path / "ref/case_1.mha")
    write_volume(labels, tmp_path / "pred/case_1.mha")
    with pytest.raises(InputFileError, match=r"ref: both case_1.mha and case_1.nii.gz are label"):
        pair_label_maps(tmp_path / "pred", tmp_path / "ref")


@pytest.fixture
def npvol_format():
    """The worked example of docs/extending.md ("An input format"), registered."""
    with example_module("format") as example:
        yield register_format(example.NPVOL)
        unregister_format("npvol")


def test_a_registered_format_is_found_by_discovery_and_ingested(tmp_path, npvol_format):
    ct, _ = small_phantom(6)
    scans = tmp_path / "scans"
    write_volume(ct, scans / "scan.npvol")
    (scans / "notes.txt").write_text("not a scan")
    found = discover_scans(scans)
    [task] = found.tasks
    assert task.case_id == f"npvol_{hash_identifier('scan.npvol')}"
    _same(task.read(), ct)
    report = ingest(scans, tmp_path / "out")
    [converted] = report.of_kind(OutcomeKind.CONVERTED)
    _same(read_nifti(tmp_path / f"out/images/{converted.case_id}.nii.gz"), ct)
    reasons = [entry["reason"] for entry in report.discovery["other_files"]]
    assert reasons == ["neither DICOM nor a volume file format medseg reads"]
    assert json.loads((tmp_path / "out/ingest_report.json").read_text())["counts"] == {
        "converted": 1
    }
