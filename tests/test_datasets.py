"""Dataset import: layouts, pairing, orphans, rejected cases, label names.

A phantom dataset as found in the wild; the same tests run on the real MSD hippocampus data
when ../shared/data is present.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from medseg.datasets import ImportReport, import_dataset, normalise_modality
from medseg.errors import DatasetLayoutError, ManifestError, SplitFractionsError
from medseg.io.nifti import read_nifti, write_nifti
from medseg.manifest import (
    ProblemKind,
    read_label_names,
    read_manifest,
    resolve,
    sha256_file,
)
from medseg.phi import hash_identifier
from medseg.volume import Volume
from tests.phantoms import (
    WILD_FLOAT_LABELS,
    WILD_ORPHANS,
    WILD_PAIRS,
    two_channel_phantom,
    write_phantom_dataset_in_the_wild,
    write_two_channel_dataset,
)

AFFINE = np.diag([0.8, 0.8, 2.0, 1.0])
SHAPE = (6, 5, 4)
_SHIFT = np.pad(np.array([[0.5], [0.0], [0.0]]), ((0, 1), (3, 0)))  # +0.5 mm along x


def _image(seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    return Volume(rng.integers(0, 1000, SHAPE).astype(np.int16), AFFINE)


def _label(values: tuple[int, ...] = (0, 1, 2), dtype: type = np.uint8) -> Volume:
    array = np.resize(np.array(values), SHAPE).astype(dtype)
    return Volume(array, AFFINE)


def _write(volume: Volume, path: Path) -> None:
    write_nifti(volume, path)


def _msd_dataset(root: Path, *, labels: dict, extra_json: dict | None = None) -> Path:
    """imagesTr/labelsTr with cases a, b, c plus one imagesTs case t."""
    for case_id in ("a", "b", "c"):
        _write(_image(), root / "imagesTr" / f"{case_id}.nii.gz")
        _write(_label(), root / "labelsTr" / f"{case_id}.nii.gz")
    _write(_image(), root / "imagesTs" / "t.nii.gz")
    payload = {"name": "Test", "labels": labels, **(extra_json or {})}
    (root / "dataset.json").write_text(json.dumps(payload), encoding="utf-8")
    return root


def _flat_dataset(root: Path, case_ids: tuple[str, ...] = ("a", "b", "c")) -> Path:
    for case_id in case_ids:
        _write(_image(), root / "images" / f"{case_id}.nii.gz")
        _write(_label(), root / "labels" / f"{case_id}.nii.gz")
    return root


# --- a dataset as found in the wild: phantoms, and MSD hippocampus from ../shared/data -------


@dataclass(frozen=True)
class WildDataset:
    """A flat-layout dataset with orphans and mixed dtypes, and what importing it must give."""

    folder: Path
    pairs: int
    orphans: list[tuple[str, str]]  # (case id, path), in case-id order
    split_counts: dict[str, int]  # with the default seed and val_fraction 0.2
    first_case: str
    shape: list[int]
    spacing: list[float]
    label_values: list[int]
    float_label_cases: tuple[str, ...]


def _hippocampus(shared_data: Path) -> WildDataset:
    return WildDataset(
        folder=shared_data / "msd_hippocampus",
        pairs=214,
        orphans=[
            ("hippocampus_010", "labels/hippocampus_010.nii.gz"),
            ("hippocampus_118", "images/hippocampus_118.nii.gz"),
            ("hippocampus_281", "labels/hippocampus_281.nii.gz"),
        ],
        split_counts={"train": 171, "val": 43},
        first_case="hippocampus_001",
        shape=[35, 51, 35],
        spacing=[1.0, 1.0, 1.0],
        label_values=[0, 1, 2],
        float_label_cases=("hippocampus_003", "hippocampus_243"),
    )


def _phantoms(folder: Path) -> WildDataset:
    return WildDataset(
        folder=write_phantom_dataset_in_the_wild(folder / "phantoms"),
        pairs=WILD_PAIRS,
        orphans=WILD_ORPHANS,
        split_counts={"train": 8, "val": 2},
        first_case="phantom_001",
        shape=[49, 39, 33],
        spacing=[3.0, 3.0, 4.0],
        label_values=[0, 1, 2, 3, 4, 5],
        float_label_cases=WILD_FLOAT_LABELS,
    )


@pytest.fixture(scope="module", params=["phantoms", "msd_hippocampus"])
def wild(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> WildDataset:
    """The phantom dataset, or the real MSD hippocampus (a reference: needs ../shared/data)."""
    if request.param == "msd_hippocampus":
        return _hippocampus(request.getfixturevalue("shared_data"))
    return _phantoms(tmp_path_factory.mktemp("wild"))


@pytest.fixture(scope="module")
def imported(wild: WildDataset, tmp_path_factory: pytest.TempPathFactory) -> ImportReport:
    manifest = tmp_path_factory.mktemp("manifests") / "wild.jsonl"
    return import_dataset(wild.folder, manifest_path=manifest)


def test_imports_every_pair_in_the_flat_layout(wild: WildDataset, imported: ImportReport) -> None:
    assert imported.layout == "flat"
    assert len(imported.records) == wild.pairs
    assert all(record.label is not None for record in imported.records)
    assert imported.rejected == []
    assert len(read_manifest(imported.manifest_path)) == wild.pairs


def test_reports_the_three_orphans(wild: WildDataset, imported: ImportReport) -> None:
    orphans = [(orphan.case_id, orphan.path) for orphan in imported.orphans]
    assert orphans == wild.orphans
    assert "has no label" in imported.orphans[1].reason
    assert "has no image" in imported.orphans[0].reason
    assert "has no image" in imported.orphans[2].reason
    case_ids = {record.case_id for record in imported.records}
    assert case_ids.isdisjoint(case_id for case_id, _ in wild.orphans)


def test_splits_a_fifth_for_validation(wild: WildDataset, imported: ImportReport) -> None:
    assert imported.split_counts == wild.split_counts


def test_record_holds_the_geometry_and_checksums(wild: WildDataset, imported: ImportReport) -> None:
    record = next(r for r in imported.records if r.case_id == wild.first_case)
    image, label = resolve(record, imported.manifest_path)
    assert image.samefile(wild.folder / "images" / f"{wild.first_case}.nii.gz")
    assert label is not None and label.samefile(
        wild.folder / "labels" / f"{wild.first_case}.nii.gz"
    )
    assert record.shape == wild.shape
    assert record.spacing == wild.spacing
    assert record.sha256 == sha256_file(image)
    assert record.label_sha256 == sha256_file(label)
    assert record.modality == "unknown"
    assert record.extra == {"label_values": wild.label_values}
    source = f"{wild.folder.name}/images/{wild.first_case}.nii.gz"
    assert record.source == hash_identifier(source)


def test_float32_labels_with_integral_values_are_accepted(
    wild: WildDataset, imported: ImportReport
) -> None:
    by_id = {record.case_id: record for record in imported.records}
    for case_id in wild.float_label_cases:
        assert by_id[case_id].extra["label_values"] == wild.label_values


def test_label_names_are_derived_without_dataset_json(
    wild: WildDataset, imported: ImportReport
) -> None:
    expected = {0: "background"} | {v: f"label_{v}" for v in wild.label_values if v}
    assert imported.label_names == expected
    assert read_label_names(imported.manifest_path) == expected


def test_data_root_makes_paths_relative_to_it(wild: WildDataset, tmp_path: Path) -> None:
    manifest = tmp_path / "data_manifests" / "wild.jsonl"
    report = import_dataset(
        wild.folder, manifest_path=manifest, data_root=wild.folder.parent, seed=3
    )
    first = read_manifest(manifest)[0]
    assert first.image == f"{wild.folder.name}/images/{wild.first_case}.nii.gz"
    assert first.label == f"{wild.folder.name}/labels/{wild.first_case}.nii.gz"
    assert report.split_counts == wild.split_counts


# --- layouts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels",
    [
        {"0": "background", "1": "anterior", "2": "posterior"},
        {"background": 0, "anterior": 1, "posterior": 2},
    ],
    ids=["msd_labels", "nnunet_v2_labels"],
)
def test_msd_layout_reads_both_label_dict_styles(tmp_path: Path, labels: dict) -> None:
    dataset = _msd_dataset(
        tmp_path / "Task09", labels=labels, extra_json={"modality": {"0": "MRI"}}
    )
    report = import_dataset(dataset, manifest_path=tmp_path / "m.jsonl", val_fraction=1 / 3)
    assert report.label_names == {0: "background", 1: "anterior", 2: "posterior"}
    assert read_label_names(tmp_path / "m.jsonl") == report.label_names
    assert report.modality == "MR"
    assert [r.modality for r in report.records] == ["MR"] * 4


def test_msd_layout_name_follows_dataset_json_dialect(tmp_path: Path) -> None:
    msd = _msd_dataset(tmp_path / "msd", labels={"0": "background", "1": "x", "2": "y"})
    v2 = _msd_dataset(tmp_path / "v2", labels={"background": 0, "x": 1, "y": 2})
    assert import_dataset(msd, manifest_path=tmp_path / "a.jsonl").layout == "msd"
    assert import_dataset(v2, manifest_path=tmp_path / "b.jsonl").layout == "nnunet_v2"


def test_images_ts_become_unlabelled_test_cases(tmp_path: Path) -> None:
    dataset = _msd_dataset(tmp_path / "Task", labels={"0": "bg", "1": "x", "2": "y"})
    report = import_dataset(dataset, manifest_path=tmp_path / "m.jsonl", val_fraction=1 / 3)
    splits = {r.case_id: (r.split, r.label) for r in report.records}
    assert splits["t"] == ("test", None)
    assert sorted(split for split, _ in splits.values()) == ["test", "train", "train", "val"]
    assert report.orphans == []


def test_nnunet_channel_suffix_is_stripped_to_pair_with_labels(tmp_path: Path) -> None:
    root = tmp_path / "Dataset001_Liver"
    for case_id in ("liver_000", "liver_001"):
        _write(_image(), root / "imagesTr" / f"{case_id}_0000.nii.gz")
        _write(_label((0, 1)), root / "labelsTr" / f"{case_id}.nii.gz")
    _write(_image(), root / "imagesTs" / "liver_009_0000.nii.gz")
    dataset_json = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "liver": 1},
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(dataset_json), encoding="utf-8")
    report = import_dataset(root, manifest_path=tmp_path / "m.jsonl", val_fraction=0.5)
    assert report.layout == "nnunet_v2"
    assert [r.case_id for r in report.records] == ["liver_000", "liver_001", "liver_009"]
    assert report.records[0].image == "Dataset001_Liver/imagesTr/liver_000_0000.nii.gz"
    assert report.records[0].label == "Dataset001_Liver/labelsTr/liver_000.nii.gz"
    assert report.modality == "CT"
    assert report.label_names == {0: "background", 1: "liver"}
    assert report.orphans == []


def test_two_channel_nnunet_dataset_imports_as_4d_cases(tmp_path: Path) -> None:
    data = tmp_path / "Dataset003_Twoch"
    case_ids = write_two_channel_dataset(data, range(3))
    manifest = tmp_path / "m.jsonl"
    report = import_dataset(data, manifest_path=manifest)
    assert (report.layout, report.rejected, report.orphans) == ("nnunet_v2", [], [])
    assert report.channel_names == ["T1", "T2"] and report.modality == "MR"
    assert [r.case_id for r in read_manifest(manifest)] == case_ids
    for record in read_manifest(manifest):
        assert record.shape == [32, 32, 32, 2] and record.spacing == [2.0, 2.0, 2.0]
        assert record.extra["channel_names"] == ["T1", "T2"]
        assert record.image == f"m.channels/{record.case_id}.nii.gz"
        image_path, _ = resolve(record, manifest)
        assert record.sha256 == sha256_file(image_path)
        stacked = read_nifti(image_path)
        for number in range(2):
            channel = read_nifti(data / "imagesTr" / f"{record.case_id}_{number:04d}.nii.gz")
            assert np.array_equal(stacked.array[..., number], channel.array)
            assert np.array_equal(stacked.affine_ras, channel.affine_ras)
        source = f"Dataset003_Twoch/imagesTr/{record.case_id}_0000.nii.gz"
        assert record.source == hash_identifier(source)


@pytest.mark.parametrize(
    ("bad", "detail"),
    [
        (
            Volume(np.zeros((32, 32, 32), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]) + _SHIFT),
            "affine differs from channel 0's by up to 0.5 mm",
        ),
        (
            Volume(np.zeros((32, 32, 30), np.float32), np.diag([2.0, 2.0, 2.0, 1.0])),
            "shape (32, 32, 30) differs from channel 0's (32, 32, 32)",
        ),
    ],
)
def test_misregistered_channel_rejects_its_case_naming_the_file(
    tmp_path: Path, bad: Volume, detail: str
) -> None:
    data = tmp_path / "Dataset003_Twoch"
    write_two_channel_dataset(data, range(3))
    write_nifti(bad, data / "imagesTr" / "twoch_001_0001.nii.gz")
    report = import_dataset(data, manifest_path=tmp_path / "m.jsonl")
    assert [r.case_id for r in report.records] == ["twoch_000", "twoch_002"]
    (problem,) = report.rejected
    assert (problem.case_id, problem.kind) == ("twoch_001", ProblemKind.GRID_MISMATCH)
    assert problem.detail.startswith("imagesTr/twoch_001_0001.nii.gz: not co-registered with ")
    assert detail in problem.detail


def test_missing_or_undeclared_channel_file_rejects_its_case(tmp_path: Path) -> None:
    data = tmp_path / "Dataset003_Twoch"
    write_two_channel_dataset(data, range(3))
    (data / "imagesTr" / "twoch_000_0001.nii.gz").unlink()
    _, labels = two_channel_phantom(2)
    write_nifti(labels, data / "imagesTr" / "twoch_002_0002.nii.gz")
    report = import_dataset(data, manifest_path=tmp_path / "m.jsonl")
    assert [r.case_id for r in report.records] == ["twoch_001"]
    missing, undeclared = report.rejected
    assert (missing.case_id, missing.kind) == ("twoch_000", ProblemKind.MISSING_FILE)
    assert missing.detail == "channel file(s) twoch_000_0001 (T2) missing"
    assert (undeclared.case_id, undeclared.kind) == ("twoch_002", ProblemKind.UNSUPPORTED)
    assert undeclared.detail == (
        "imagesTr/twoch_002_0002.nii.gz: dataset.json declares 2 channels (T1, T2)"
    )


def test_msd_4d_files_import_with_channel_names_from_modality(tmp_path: Path) -> None:
    root = tmp_path / "Task01_BrainTumour"
    four_d = np.stack([_image(0).array, _image(1).array], axis=-1)
    _write(Volume(four_d, AFFINE), root / "imagesTr" / "BRATS_001.nii.gz")
    _write(
        Volume(np.concatenate([four_d, four_d[..., :1]], -1), AFFINE),
        root / "imagesTr" / "BRATS_002.nii.gz",
    )
    for case_id in ("BRATS_001", "BRATS_002"):
        _write(_label(), root / "labelsTr" / f"{case_id}.nii.gz")
    dataset_json = {
        "labels": {"0": "bg", "1": "a", "2": "b"},
        "modality": {"0": "FLAIR", "1": "T1w"},
    }
    (root / "dataset.json").write_text(json.dumps(dataset_json), encoding="utf-8")
    report = import_dataset(root, manifest_path=tmp_path / "m.jsonl")
    (record,) = report.records
    assert record.image == "Task01_BrainTumour/imagesTr/BRATS_001.nii.gz"
    assert record.shape == [6, 5, 4, 2] and record.extra["channel_names"] == ["FLAIR", "T1w"]
    (problem,) = report.rejected
    assert (problem.case_id, problem.kind) == ("BRATS_002", ProblemKind.SHAPE_MISMATCH)
    assert problem.detail == (
        "imagesTr/BRATS_002.nii.gz: has 3 channel(s), dataset.json declares 2"
    )


def test_channel_files_without_declared_channels_are_rejected(tmp_path: Path) -> None:
    root = tmp_path / "Dataset002"
    for channel in ("0000", "0001"):
        _write(_image(), root / "imagesTr" / f"brain_001_{channel}.nii.gz")
    _write(_label(), root / "labelsTr" / "brain_001.nii.gz")
    dataset_json = {"channel_names": {"0": "T1"}, "labels": {"bg": 0, "a": 1, "b": 2}}
    (root / "dataset.json").write_text(json.dumps(dataset_json), encoding="utf-8")
    report = import_dataset(root, manifest_path=tmp_path / "m.jsonl")
    assert report.records == []
    (problem,) = report.rejected
    assert (problem.case_id, problem.kind) == ("brain_001", ProblemKind.UNSUPPORTED)
    assert problem.detail == (
        "imagesTr/brain_001_0001.nii.gz: dataset.json declares one channel "
        "(channel_names declares more)"
    )


def test_case_ids_ending_in_four_digits_are_kept_without_channel_names(tmp_path: Path) -> None:
    root = tmp_path / "Task"
    for case_id in ("case_0001", "case_0002"):
        _write(_image(), root / "imagesTr" / f"{case_id}.nii.gz")
        _write(_label(), root / "labelsTr" / f"{case_id}.nii.gz")
    labels = {"labels": {"0": "bg", "1": "x", "2": "y"}}
    (root / "dataset.json").write_text(json.dumps(labels), encoding="utf-8")
    report = import_dataset(root, manifest_path=tmp_path / "m.jsonl")
    assert [r.case_id for r in report.records] == ["case_0001", "case_0002"]
    assert (report.layout, report.orphans, report.rejected) == ("msd", [], [])


def test_unrecognised_layout_raises(tmp_path: Path) -> None:
    (tmp_path / "scans").mkdir()
    with pytest.raises(DatasetLayoutError, match="unrecognised layout"):
        import_dataset(tmp_path, manifest_path=tmp_path / "m.jsonl")


def test_images_tr_without_dataset_json_raises(tmp_path: Path) -> None:
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"labelsTr/ and dataset\.json"):
        import_dataset(tmp_path, manifest_path=tmp_path / "m.jsonl")


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"0": 1.5}, "neither MSD style"),
        ({"0": "bg", "zero": 0}, "label value 0 is named twice"),
    ],
)
def test_unusable_dataset_json_labels_raise(tmp_path: Path, labels: dict, message: str) -> None:
    dataset = _msd_dataset(tmp_path / "Task", labels=labels)
    with pytest.raises(DatasetLayoutError, match=message):
        import_dataset(dataset, manifest_path=tmp_path / "m.jsonl")


def test_data_root_must_contain_the_dataset(tmp_path: Path) -> None:
    dataset = _flat_dataset(tmp_path / "data")
    with pytest.raises(ManifestError, match="not inside the data root"):
        import_dataset(dataset, manifest_path=tmp_path / "m.jsonl", data_root=tmp_path / "other")


def test_invalid_fractions_raise_before_reading_anything(tmp_path: Path) -> None:
    dataset = _flat_dataset(tmp_path / "data")
    with pytest.raises(SplitFractionsError, match="fractions"):
        import_dataset(
            dataset, manifest_path=tmp_path / "m.jsonl", val_fraction=0.7, test_fraction=0.5
        )
    assert not (tmp_path / "m.jsonl").exists()


# --- rejected cases and orphans ---------------------------------------------------------------


def test_grid_mismatch_is_rejected_not_raised(tmp_path: Path) -> None:
    dataset = _flat_dataset(tmp_path / "data")
    shifted = Volume(_label().array, AFFINE @ np.array([[1, 0, 0, 2.0], *np.eye(4)[1:]]))
    _write(shifted, dataset / "labels" / "b.nii.gz")
    _write(Volume(np.zeros((6, 5, 3), np.uint8), AFFINE), dataset / "labels" / "c.nii.gz")
    report = import_dataset(dataset, manifest_path=tmp_path / "m.jsonl")
    assert [r.case_id for r in report.records] == ["a"]
    details = {p.case_id: (p.kind, p.detail) for p in report.rejected}
    assert details["b"] == (
        ProblemKind.GRID_MISMATCH,
        "labels/b.nii.gz: label affine differs from the image affine by up to 1.6 mm",
    )
    assert details["c"] == (
        ProblemKind.GRID_MISMATCH,
        "labels/c.nii.gz: label shape (6, 5, 3) differs from image shape (6, 5, 4)",
    )


def test_non_integral_label_is_rejected(tmp_path: Path) -> None:
    dataset = _flat_dataset(tmp_path / "data")
    _write(_label((0.0, 0.25, 1.0), dtype=np.float32), dataset / "labels" / "a.nii.gz")
    report = import_dataset(dataset, manifest_path=tmp_path / "m.jsonl")
    (problem,) = report.rejected
    assert (problem.case_id, problem.kind) == ("a", ProblemKind.NON_INTEGRAL_LABEL)
    assert problem.detail == "labels/a.nii.gz: label has 1 non-integral value(s), e.g. 0.25"
    assert [r.case_id for r in report.records] == ["b", "c"]


def test_label_value_missing_from_dataset_json_is_rejected(tmp_path: Path) -> None:
    dataset = _msd_dataset(tmp_path / "Task", labels={"0": "background", "1": "anterior"})
    report = import_dataset(dataset, manifest_path=tmp_path / "m.jsonl")
    assert [p.kind for p in report.rejected] == [ProblemKind.UNKNOWN_LABEL_VALUE] * 3
    assert "label values [2] are not named in dataset.json" in report.rejected[0].detail
    assert [r.case_id for r in report.records] == ["t"]


def test_unreadable_image_is_rejected(tmp_path: Path) -> None:
    dataset = _flat_dataset(tmp_path / "data")
    (dataset / "images" / "b.nii.gz").write_bytes(b"\x1f\x8b garbage")
    report = import_dataset(dataset, manifest_path=tmp_path / "m.jsonl")
    (problem,) = report.rejected
    assert (problem.case_id, problem.kind) == ("b", ProblemKind.UNREADABLE)
    assert problem.detail.startswith("images/b.nii.gz: cannot read NIfTI")


def test_orphans_stay_out_of_the_manifest(tmp_path: Path) -> None:
    dataset = _flat_dataset(tmp_path / "data")
    _write(_image(), dataset / "images" / "lonely.nii.gz")
    _write(_label(), dataset / "labels" / "widow.nii")
    (dataset / "images" / "._a.nii.gz").write_bytes(b"AppleDouble")
    (dataset / "images" / "notes.txt").write_text("ignored")
    report = import_dataset(dataset, manifest_path=tmp_path / "m.jsonl")
    assert [(o.case_id, o.path) for o in report.orphans] == [
        ("lonely", "images/lonely.nii.gz"),
        ("widow", "labels/widow.nii"),
    ]
    assert [r.case_id for r in read_manifest(tmp_path / "m.jsonl")] == ["a", "b", "c"]


def test_flat_layout_modality_override_and_test_fraction(tmp_path: Path) -> None:
    dataset = _flat_dataset(tmp_path / "data", case_ids=tuple(f"c{i}" for i in range(10)))
    report = import_dataset(
        dataset,
        manifest_path=tmp_path / "m.jsonl",
        modality="MR",
        val_fraction=0.2,
        test_fraction=0.1,
    )
    assert {r.modality for r in report.records} == {"MR"}
    assert report.split_counts == {"train": 7, "val": 2, "test": 1}


def test_import_is_deterministic(tmp_path: Path) -> None:
    dataset = _flat_dataset(tmp_path / "data")
    import_dataset(dataset, manifest_path=tmp_path / "one.jsonl", seed=5)
    import_dataset(dataset, manifest_path=tmp_path / "two.jsonl", seed=5)
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()


@pytest.mark.parametrize(
    ("name", "code"),
    [("MRI", "MR"), ("T1w", "MR"), ("t1gd", "MR"), ("CT", "CT"), ("zscore", "unknown"),
     ("noNorm", "unknown"), ("PET", "PT"), ("Ultrasound", "Ultrasound")],
)  # fmt: skip
def test_normalise_modality(name: str, code: str) -> None:
    assert normalise_modality(name) == code
