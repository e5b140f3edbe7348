"""Fixtures of the batch tests: one packaged model for the session, trees of phantom scans."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.batch.trees import ScanTree
from tests.packaged_model import build_packaged_model
from tests.tiny_dataset import TinyDataset


@dataclass(frozen=True)
class BatchModel:
    """A tiny packaged U-Net: registry URI + its tracking store, and the same as a folder."""

    uri: str
    tracking_uri: str
    folder: Path  # for batches that log to another tracking store


@pytest.fixture(scope="session")
def batch_model(tiny_dataset: TinyDataset, tmp_path_factory: pytest.TempPathFactory) -> BatchModel:
    from mlflow.artifacts import download_artifacts

    root = tmp_path_factory.mktemp("batch_model")
    uri, tracking = build_packaged_model(tiny_dataset.plan, root)
    folder = download_artifacts(uri, dst_path=str(root / "folder"), tracking_uri=tracking)
    return BatchModel(uri, tracking, Path(folder))


def predict_command(scan: Path, model: BatchModel, out: Path, *options: str) -> list[str]:
    """``medseg predict`` arguments for ``model`` (its registry URI and tracking store)."""
    command = ["predict", str(scan), "--model", model.uri, "--tracking-uri", model.tracking_uri]
    return [*command, "--out", str(out), *options]


def batch_command(scans: Path, model: BatchModel, out: Path, *options: str) -> list[str]:
    """``medseg batch`` arguments for ``model`` (its registry URI and tracking store)."""
    return [
        "batch",
        str(scans),
        "--model",
        model.uri,
        "--tracking-uri",
        model.tracking_uri,
        "--out",
        str(out),
        *options,
    ]


@pytest.fixture
def mixed_tree(tmp_path: Path) -> ScanTree:
    """3 NIfTI scans (one in a folder named like a patient), a DICOM series, 2 corrupt files."""
    tree = ScanTree(tmp_path / "scans")
    tree.nifti("inbox/DOE^JANE/ct.nii.gz", 0)
    tree.nifti("inbox/case_b.nii.gz", 1)
    tree.nifti("inbox/case_c.nii.gz", 2)
    tree.dicom("dicom/SMITH^JOHN", 3)
    tree.truncated_nifti("inbox/truncated.nii.gz", 4)
    tree.garbage("dicom/garbage.dcm")
    return tree
