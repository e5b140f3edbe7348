"""Fixtures of the fault tests: a tiny packaged model on a phantom plan (no downloaded data),
and the command line run in-process."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from typer.testing import CliRunner, Result

from medseg.cli import app
from medseg.ingest import ingest
from medseg.manifest import write_label_names
from medseg.preprocess.config import PlanOptions
from medseg.preprocess.plan import Plan, plan_manifest
from tests.packaged_model import log_tiny_unet
from tests.phantoms import PHANTOM_LABELS, write_phantom_nifti


def run_medseg(*arguments: object) -> Result:
    """``medseg ARGUMENTS`` in this process (output and exit code in the result)."""
    return CliRunner().invoke(app, [str(a) for a in arguments], prog_name="medseg")


def said(result: Result) -> str:
    """What the command printed, as one line (the console wraps long lines)."""
    return " ".join(result.output.split())


@dataclass(frozen=True)
class PhantomModel:
    """A 6-class U-Net with random weights for the phantom plan, logged to a SQLite store."""

    uri: str
    tracking_uri: str
    plan: Plan  # to log the same model into another store

    def options(self) -> list[str]:
        """``--model URI --tracking-uri URI`` for ``medseg predict`` and ``medseg batch``."""
        return ["--model", self.uri, "--tracking-uri", self.tracking_uri]


@pytest.fixture(scope="session")
def phantom_model(tmp_path_factory: pytest.TempPathFactory) -> PhantomModel:
    root = tmp_path_factory.mktemp("phantom_model")
    for seed in (0, 1):
        write_phantom_nifti(
            root / "scans" / f"p{seed}.nii.gz", seed, label_path=root / "labels" / f"p{seed}.nii.gz"
        )
    report = ingest(
        root / "scans", root / "ingested", case_ids="folder", labels_dir=root / "labels"
    )
    write_label_names(PHANTOM_LABELS, report.manifest_path)
    plan = plan_manifest(
        report.manifest_path,
        options=PlanOptions(patch_size_3d=(32, 32, 32), patch_size_2d=(32, 32)),
    )
    tracking_uri = f"sqlite:///{root}/mlflow.db"
    return PhantomModel(log_tiny_unet(plan, tracking_uri).info.model_uri, tracking_uri, plan)
