"""A manifest split linked into a stage folder (``predict``/``evaluate`` with ``split:``): scans
and label maps of every format, detached headers with their data files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.datasets import import_dataset
from medseg.io.formats import data_files, read_volume, write_volume
from medseg.manifest import ManifestRecord, sha256_file, write_manifest
from medseg.pipeline.stages.apply import _link_split
from medseg.pipeline.stages.base import PipelineError, StageContext
from tests.phantoms import small_phantom, write_phantom_dataset_json

SEEDS = (1, 2, 3)


def _context(tmp_path: Path, manifest: Path) -> StageContext:
    return StageContext(
        name="predict",
        folder=tmp_path / "stage",
        data_root=tmp_path,
        config_root=tmp_path,
        tracking_uri="",
        experiment="",
        parent_run_id=None,
        provided={"manifest": manifest},
    )


def _dataset(tmp_path: Path, image_suffix: str, label_suffix: str) -> Path:
    dataset = tmp_path / "flat"
    for seed in SEEDS:
        ct, labels = small_phantom(seed)
        write_volume(ct, dataset / "images" / f"case_{seed}{image_suffix}")
        write_volume(labels, dataset / "labels" / f"case_{seed}{label_suffix}")
    write_phantom_dataset_json(dataset)
    manifest = tmp_path / "m.jsonl"
    import_dataset(dataset, manifest_path=manifest, val_fraction=0.0)
    return manifest


def test_detached_headers_are_linked_with_their_data_files(tmp_path: Path) -> None:
    ctx = _context(tmp_path, _dataset(tmp_path, ".nhdr", ".mhd"))
    images = _link_split(ctx, "train", labels=False, folder=tmp_path / "stage/scans")
    labels = _link_split(ctx, "train", labels=True, folder=tmp_path / "stage/references")
    for seed in SEEDS:
        ct, label_map = small_phantom(seed)
        for linked, expected in (
            (images / f"case_{seed}.nhdr", ct),
            (labels / f"case_{seed}.mhd", label_map),
        ):
            assert linked.is_symlink() and [p.is_file() for p in data_files(linked)] == [True]
            volume = read_volume(linked)
            np.testing.assert_array_equal(volume.array, expected.array)
            np.testing.assert_allclose(volume.affine_ras, expected.affine_ras, atol=1e-4)
    # Linked again (a rerun of the stage): the links are replaced, not refused.
    _link_split(ctx, "train", labels=False, folder=images)
    assert read_volume(images / "case_1.nhdr").shape == small_phantom(1)[0].shape


def test_two_cases_with_one_data_file_name_are_refused_naming_both(tmp_path: Path) -> None:
    dataset = tmp_path / "nested"
    for seed in (1, 2):  # per-case folders, each with image.raw
        ct, labels = small_phantom(seed)
        write_volume(ct, dataset / f"case_{seed}" / "image.mhd")
        write_volume(labels, dataset / f"case_{seed}" / "label.nii.gz")
    manifest = tmp_path / "m.jsonl"
    lines = []
    for seed in (1, 2):
        ct, _ = small_phantom(seed)
        lines.append(
            ManifestRecord(
                case_id=f"case_{seed}",
                image=f"nested/case_{seed}/image.mhd",
                label=f"nested/case_{seed}/label.nii.gz",
                sha256=sha256_file(dataset / f"case_{seed}/image.mhd"),
                label_sha256=sha256_file(dataset / f"case_{seed}/label.nii.gz"),
                modality="CT",
                shape=list(ct.shape),
                spacing=[3.0, 3.0, 4.0],
                source="0" * 16,
                split="test",
            )
        )
    write_manifest(lines, manifest)
    with pytest.raises(PipelineError, match="cases case_1 and case_2 both keep their voxels"):
        _link_split(_context(tmp_path, manifest), "test", labels=False, folder=tmp_path / "s")
