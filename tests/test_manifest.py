"""Manifest format: reading, writing, paths, splits, label-name sidecar and validation."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from medseg.datasets import import_dataset
from medseg.errors import ManifestError, NonIntegralLabelError, SplitFractionsError
from medseg.io.formats import data_files, write_volume
from medseg.io.nifti import write_nifti
from medseg.manifest import (
    ManifestRecord,
    ProblemKind,
    assign_splits,
    label_names_path,
    label_values,
    manifest_relative_path,
    read_label_names,
    read_manifest,
    resolve,
    sha256_file,
    split_counts,
    volume_sha256,
    write_label_names,
    write_manifest,
)
from medseg.manifest_validation import validate_manifest
from medseg.phi import hash_identifier
from medseg.volume import Volume
from tests.phantoms import (
    WILD_PAIRS,
    small_phantom,
    write_phantom_dataset_in_the_wild,
    write_phantom_dataset_json,
    write_two_channel_dataset,
)

DIGEST_A = "a" * 64
DIGEST_B = "b" * 64


def _record(case_id: str, **changes: object) -> ManifestRecord:
    record = ManifestRecord(
        case_id=case_id,
        image=f"images/{case_id}.nii.gz",
        label=f"labels/{case_id}.nii.gz",
        sha256=DIGEST_A,
        label_sha256=DIGEST_B,
        modality="MR",
        shape=[4, 5, 6],
        spacing=[1.0, 1.0, 2.5],
        source=hash_identifier(case_id),
        split="train",
        extra={"label_values": [0, 1]},
    )
    return replace(record, **changes)


def _line(**changes: object) -> str:
    payload = asdict(_record("case_a"))
    payload.update(changes)
    return json.dumps({k: v for k, v in payload.items() if v != "<drop>"})


def test_hash_identifier_is_the_truncated_sha256() -> None:
    assert hash_identifier("abc") == "ba7816bf8f01cfea"
    assert (
        hash_identifier("Doe^John/1.2.840.113619")
        == (hashlib.sha256(b"Doe^John/1.2.840.113619").hexdigest()[:16])
    )


def test_sha256_file_matches_hashlib_on_a_multi_chunk_file(tmp_path: Path) -> None:
    payload = np.random.default_rng(0).bytes(3 * 1024 * 1024 + 17)
    (tmp_path / "blob.bin").write_bytes(payload)
    assert sha256_file(tmp_path / "blob.bin") == hashlib.sha256(payload).hexdigest()


def test_write_then_read_round_trips_sorted_compact_lines(tmp_path: Path) -> None:
    records = [_record("case_b"), _record("case_a", label=None, label_sha256=None, split="test")]
    path = write_manifest(records, tmp_path / "m.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["case_id"] for line in lines] == ["case_a", "case_b"]
    assert ", " not in lines[0] and ": " not in lines[0]
    assert read_manifest(path) == sorted(records, key=lambda r: r.case_id)


def test_write_manifest_rejects_duplicate_case_ids(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"duplicate case_id\(s\) case_a"):
        write_manifest([_record("case_a"), _record("case_a")], tmp_path / "m.jsonl")


MALFORMED_LINES = [
    ("{not json", r"m\.jsonl:2: not valid JSON"),
    ("[1, 2]", r"m\.jsonl:2: expected a JSON object, got list"),
    (_line(sha256="<drop>"), r"m\.jsonl:2: missing field\(s\) sha256"),
    (_line(patient_name="x"), r"m\.jsonl:2: unknown field\(s\) patient_name"),
    (_line(shape=[4, 5]), r"m\.jsonl:2: field 'shape' must be a list of 3 or 4 positive"),
    (_line(spacing=[1, 1, -1]), r"m\.jsonl:2: field 'spacing'"),
    (_line(split="training"), r"m\.jsonl:2: field 'split' must be one of train, val, test"),
    (_line(image="/abs/a.nii.gz"), r"m\.jsonl:2: field 'image' must be a relative path"),
    (_line(sha256="XYZ"), r"m\.jsonl:2: field 'sha256' must be 64 lowercase hex digits"),
    (_line(label_sha256=None), r"m\.jsonl:2: 'label' and 'label_sha256' must both be set"),
    (_line(label=None, label_sha256=None), r"m\.jsonl:2: a case without label cannot be in"),
    (_line(case_id="case_0"), r"m\.jsonl:2: case_id 'case_0' already used on line 1"),
    (
        _line(extra={"channel_names": ["T1", "T2"]}),
        r"m\.jsonl:2: 'extra.channel_names' must list one name per channel of a 4D 'shape'",
    ),
    (
        _line(shape=[4, 5, 6, 3], extra={"channel_names": ["T1", "T2"]}),
        r"got \['T1', 'T2'\] for shape \[4, 5, 6, 3\]",
    ),
]


@pytest.mark.parametrize(("bad_line", "message"), MALFORMED_LINES)
def test_read_manifest_names_file_and_line_of_a_bad_line(
    tmp_path: Path, bad_line: str, message: str
) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(_record("case_0").to_json() + "\n" + bad_line + "\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=message):
        read_manifest(path)


def test_read_manifest_ignores_blank_lines_and_defaults_extra(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text("\n" + _line(extra="<drop>") + "\n\n", encoding="utf-8")
    (record,) = read_manifest(path)
    assert record.extra == {}
    assert record.case_id == "case_a"


def test_read_manifest_of_a_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"nope\.jsonl: manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")


def test_resolve_is_relative_to_the_manifest_folder_by_default(tmp_path: Path) -> None:
    image, label = resolve(_record("c"), tmp_path / "sub" / "m.jsonl")
    assert image == tmp_path / "sub" / "images" / "c.nii.gz"
    assert label == tmp_path / "sub" / "labels" / "c.nii.gz"


def test_resolve_uses_data_root_when_given(tmp_path: Path) -> None:
    record = _record("c", label=None, label_sha256=None, split="test")
    image, label = resolve(record, tmp_path / "repo" / "m.jsonl", data_root=tmp_path / "data")
    assert (image, label) == (tmp_path / "data" / "images" / "c.nii.gz", None)


def test_manifest_relative_path_inverts_resolve(tmp_path: Path) -> None:
    manifest = tmp_path / "repo" / "manifests" / "m.jsonl"
    target = tmp_path / "data" / "set" / "x.nii.gz"
    stored = manifest_relative_path(target, manifest_path=manifest)
    assert stored == "../../data/set/x.nii.gz"
    assert resolve(_record("x", image=stored), manifest)[0] == target
    rooted = manifest_relative_path(target, manifest_path=manifest, data_root=tmp_path / "data")
    assert rooted == "set/x.nii.gz"


def test_manifest_relative_path_refuses_paths_outside_data_root(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not inside the data root"):
        manifest_relative_path(
            tmp_path / "elsewhere" / "x.nii.gz",
            manifest_path=tmp_path / "m.jsonl",
            data_root=tmp_path / "data",
        )


@pytest.mark.parametrize(
    ("n_cases", "fractions", "expected"),
    [
        (214, (0.8, 0.2, 0.0), (171, 43, 0)),
        (10, (0.7, 0.2, 0.1), (7, 2, 1)),
        (3, (0.8, 0.2, 0.0), (2, 1, 0)),
        (7, (1 / 3, 1 / 3, 1 / 3), (3, 2, 2)),
        (0, (0.8, 0.2, 0.0), (0, 0, 0)),
        (5, (1.0, 0.0, 0.0), (5, 0, 0)),
    ],
)
def test_split_counts_round_to_exact_totals(
    n_cases: int, fractions: tuple[float, float, float], expected: tuple[int, int, int]
) -> None:
    assert split_counts(n_cases, fractions) == expected


@pytest.mark.parametrize("fractions", [(0.8, 0.3, 0.0), (1.2, -0.2, 0.0), (0.5, 0.5)])
def test_split_counts_reject_invalid_fractions(fractions: tuple[float, ...]) -> None:
    with pytest.raises(SplitFractionsError, match="fractions"):
        split_counts(10, fractions)


def test_assign_splits_is_reproducible_and_independent_of_input_order() -> None:
    case_ids = [f"case_{i:03d}" for i in range(50)]
    splits = assign_splits(case_ids, seed=7, fractions=(0.7, 0.2, 0.1))
    assert assign_splits(list(reversed(case_ids)), seed=7, fractions=(0.7, 0.2, 0.1)) == splits
    assert sorted(splits) == case_ids
    counts = {name: list(splits.values()).count(name) for name in ("train", "val", "test")}
    assert counts == {"train": 35, "val": 10, "test": 5}


def test_assign_splits_depends_on_the_seed() -> None:
    case_ids = [f"case_{i:03d}" for i in range(50)]
    assert assign_splits(case_ids, seed=0) != assign_splits(case_ids, seed=1)


def test_assign_splits_rejects_repeated_case_ids() -> None:
    with pytest.raises(ManifestError, match="unique"):
        assign_splits(["a", "b", "a"], seed=0)


def test_label_names_sidecar_round_trips_in_numeric_order(tmp_path: Path) -> None:
    manifest = tmp_path / "cases.jsonl"
    path = write_label_names({10: "ten", 2: "two", 0: "background"}, manifest)
    assert path == label_names_path(manifest) == tmp_path / "cases.labels.json"
    assert list(json.loads(path.read_text())["labels"]) == ["0", "2", "10"]
    assert read_label_names(manifest) == {0: "background", 2: "two", 10: "ten"}


def test_read_label_names_without_sidecar_names_it(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"cases\.labels\.json: label names not found"):
        read_label_names(tmp_path / "cases.jsonl")


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.array([[[0, 2], [2, 1]]], dtype=np.uint8), [0, 1, 2]),
        (np.array([[[0.0, 2.0], [3.0, 0.0]]], dtype=np.float32), [0, 2, 3]),
    ],
)
def test_label_values_of_integral_maps(array: np.ndarray, expected: list[int]) -> None:
    assert label_values(array) == expected


@pytest.mark.parametrize("bad", [0.5, np.nan, np.inf])
def test_label_values_reject_non_integral_values(bad: float) -> None:
    with pytest.raises(NonIntegralLabelError, match="non-integral"):
        label_values(np.array([[[0.0, 1.0], [bad, 1.0]]], dtype=np.float32))


# --- validate_manifest on a small generated dataset -------------------------------------------


def _write_pair(dataset: Path, case_id: str, *, label: np.ndarray | None = None) -> None:
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    image = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    label = label if label is not None else (image % 3).astype(np.uint8)
    write_nifti(Volume(image, affine), dataset / "images" / f"{case_id}.nii.gz")
    write_nifti(Volume(label, affine), dataset / "labels" / f"{case_id}.nii.gz")


@pytest.fixture
def small_manifest(tmp_path: Path) -> Path:
    """A flat dataset of three cases imported into ``tmp_path/manifests/cases.jsonl``."""
    dataset = tmp_path / "data"
    for case_id in ("c1", "c2", "c3"):
        _write_pair(dataset, case_id)
    manifest = tmp_path / "manifests" / "cases.jsonl"
    import_dataset(dataset, manifest_path=manifest)
    return manifest


def test_validate_manifest_passes_on_untouched_files(small_manifest: Path) -> None:
    result = validate_manifest(small_manifest)
    assert result.ok
    assert result.n_cases == 3
    assert result.problems == []


def test_validate_manifest_finds_a_changed_image(small_manifest: Path) -> None:
    image_path, _ = resolve(read_manifest(small_manifest)[1], small_manifest)
    bigger = Volume(np.zeros((4, 5, 7), np.int16), np.diag([1.5, 1.5, 2.0, 1.0]))
    write_nifti(bigger, image_path)
    problems = validate_manifest(small_manifest).by_case()
    assert list(problems) == ["c2"]
    kinds = [problem.kind for problem in problems["c2"]]
    assert kinds == [
        ProblemKind.CHECKSUM_MISMATCH,
        ProblemKind.SHAPE_MISMATCH,
        ProblemKind.SPACING_MISMATCH,
        ProblemKind.GRID_MISMATCH,
    ]
    assert "shape [4, 5, 7], manifest says [4, 5, 6]" in problems["c2"][1].detail
    assert "spacing [1.5, 1.5, 2.0] mm, manifest says [1.5, 1.5, 3.0]" in problems["c2"][2].detail


def test_validate_manifest_finds_a_missing_label(small_manifest: Path) -> None:
    _, label_path = resolve(read_manifest(small_manifest)[0], small_manifest)
    assert label_path is not None
    label_path.unlink()
    (problem,) = validate_manifest(small_manifest).problems
    assert (problem.case_id, problem.kind) == ("c1", ProblemKind.MISSING_FILE)
    assert str(label_path) in problem.detail


def test_validate_manifest_finds_a_non_integral_label(small_manifest: Path) -> None:
    _, label_path = resolve(read_manifest(small_manifest)[2], small_manifest)
    assert label_path is not None
    fractional = np.full((4, 5, 6), 0.5, dtype=np.float32)
    write_nifti(Volume(fractional, np.diag([1.5, 1.5, 3.0, 1.0])), label_path)
    kinds = [problem.kind for problem in validate_manifest(small_manifest).problems]
    assert kinds == [ProblemKind.CHECKSUM_MISMATCH, ProblemKind.NON_INTEGRAL_LABEL]


def test_validate_manifest_reports_an_unreadable_file(small_manifest: Path) -> None:
    image_path, _ = resolve(read_manifest(small_manifest)[0], small_manifest)
    image_path.write_bytes(b"not a nifti")
    kinds = [problem.kind for problem in validate_manifest(small_manifest).problems]
    assert kinds == [ProblemKind.CHECKSUM_MISMATCH, ProblemKind.UNREADABLE]


def test_validate_manifest_of_a_phantom_dataset_import_is_clean(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_phantom_dataset_in_the_wild(data / "phantoms")
    manifest = tmp_path / "phantoms.jsonl"
    import_dataset(data / "phantoms", manifest_path=manifest, data_root=data)
    result = validate_manifest(manifest, data_root=data)
    assert (result.ok, result.n_cases, result.problems) == (True, WILD_PAIRS, [])


def test_validate_manifest_of_a_two_channel_import_is_clean(tmp_path: Path) -> None:
    write_two_channel_dataset(tmp_path / "data", range(2))
    manifest = tmp_path / "twoch.jsonl"
    import_dataset(tmp_path / "data", manifest_path=manifest)
    result = validate_manifest(manifest)
    assert (result.ok, result.n_cases, result.problems) == (True, 2, [])


def test_import_refuses_a_data_root_that_cannot_hold_stacked_channels(tmp_path: Path) -> None:
    write_two_channel_dataset(tmp_path / "data" / "twoch", range(2))
    manifest = tmp_path / "manifests" / "twoch.jsonl"
    with pytest.raises(ManifestError, match=r"twoch\.channels: not inside the data root"):
        import_dataset(
            tmp_path / "data" / "twoch", manifest_path=manifest, data_root=tmp_path / "data"
        )
    assert not manifest.exists()


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_the_checksum_of_a_single_file_volume_is_its_files(tmp_path: Path, suffix: str) -> None:
    """Manifests written before detached headers were covered stay valid and unchanged."""
    path = write_volume(small_phantom(1)[0], tmp_path / f"case{suffix}")
    assert volume_sha256(path) == sha256_file(path)


def test_the_checksum_of_a_detached_header_covers_its_data_file(tmp_path: Path) -> None:
    dataset = tmp_path / "data"
    for seed in (1, 2):
        ct, labels = small_phantom(seed)
        write_volume(ct, dataset / "images" / f"case_{seed}.nhdr")
        write_volume(labels, dataset / "labels" / f"case_{seed}.mhd")
    write_phantom_dataset_json(dataset)
    manifest = tmp_path / "cases.jsonl"
    import_dataset(dataset, manifest_path=manifest)
    assert validate_manifest(manifest).ok
    first, second = read_manifest(manifest)
    header, label_header = resolve(first, manifest)
    assert label_header is not None
    (data,) = data_files(header)
    assert first.sha256 == volume_sha256(header) != sha256_file(header)

    # Only the voxels of case_1 change (another phantom, same grid): its header is untouched.
    other = write_volume(small_phantom(2)[0], tmp_path / "other" / header.name)
    header_bytes = header.read_bytes()
    data.write_bytes(data_files(other)[0].read_bytes())
    assert header.read_bytes() == header_bytes
    (problem,) = validate_manifest(manifest).problems
    assert (problem.case_id, problem.kind) == ("case_1", ProblemKind.CHECKSUM_MISMATCH)

    # A missing data file is a missing file, named, not a crash.
    (label_data,) = data_files(label_header)
    label_data.unlink()
    problems = validate_manifest(manifest).by_case()["case_1"]
    assert [p.kind for p in problems] == [ProblemKind.CHECKSUM_MISMATCH, ProblemKind.MISSING_FILE]
    assert f"its data file {label_data} is not found" in problems[1].detail
    assert second.case_id not in validate_manifest(manifest).by_case()


# --- reference data (../shared/data) ---------------------------------------------------------


def test_validate_manifest_of_real_hippocampus_import_is_clean(
    shared_data: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "hippocampus.jsonl"
    import_dataset(shared_data / "msd_hippocampus", manifest_path=manifest, data_root=shared_data)
    result = validate_manifest(manifest, data_root=shared_data)
    assert (result.ok, result.n_cases) == (True, 214)
