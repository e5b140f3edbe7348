"""The plan of a small phantom dataset (``tests.phantoms``), for tests that predict with a
network they build themselves: about a second, nothing downloaded."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medseg.datasets import import_dataset
from medseg.preprocess.config import PlanOptions
from medseg.preprocess.plan import Plan, plan_manifest
from tests.phantoms import write_phantom_nifti


def plan_phantoms(
    folder: Path,
    *,
    seeds: Sequence[int] = (0, 1),
    patch_size_3d: tuple[int, int, int] = (32, 32, 32),
    patch_size_2d: tuple[int, int] = (32, 32),
) -> Plan:
    """Write phantoms ``seeds`` (CT and labels) under ``folder``, import and plan them.

    The plan has six classes (background and ``PHANTOM_LABELS``), the phantoms' spacing of
    3 x 3 x 4 mm, and a ``2d`` configuration whose slices are perpendicular to axis 2.
    """
    data = Path(folder) / "data"
    for seed in seeds:
        write_phantom_nifti(
            data / "images" / f"phantom_{seed}.nii.gz",
            seed,
            label_path=data / "labels" / f"phantom_{seed}.nii.gz",
        )
    manifest = Path(folder) / "phantoms.jsonl"
    import_dataset(data, manifest_path=manifest, val_fraction=0.5, modality="CT")
    options = PlanOptions(patch_size_3d=patch_size_3d, patch_size_2d=patch_size_2d)
    return plan_manifest(manifest, options=options)
