"""A small real segmentation model trained, in the test, on TotalSegmentator's 20-slice CT.

``train_ct_model`` ingests the JPEG 2000 series from DICOM with its reference segmentation
(liver, spleen and stomach relabelled 1..3), plans, preprocesses and trains a small 2D U-Net
through the project's public API (ingest, plan_manifest, preprocess_manifest, train), which
logs it to MLflow as a packaged medseg model, registered when a name is given. The network
overfits the one scan on purpose: it predicts real structures on that same CT, which is what
an end-to-end PACS test needs. On 2 CPU cores with bfloat16: about 17 s (120 steps), Dice
0.97/0.96/0.94 on the DICOM grid.

There is no validation split (one scan), so a registered version carries ``val_mean_dice``
0.0: it becomes ``champion`` in a fresh registry, but not over an earlier version of the same
name (ties keep the champion). Use a fresh store or name per test, or ``model_uri``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.ingest.case_ids import CaseIdScheme
from medseg.ingest.stage import ingest
from medseg.io.nifti import read_nifti, write_nifti
from medseg.manifest import write_label_names
from medseg.preprocess.config import PlanOptions
from medseg.preprocess.plan import plan_manifest
from medseg.preprocess.stage import preprocess_manifest
from medseg.train.config import TrainConfig
from medseg.train.loop import train
from medseg.volume import Volume
from tests.real_ct import EXAMPLE, EXAMPLE_CT, REFERENCE, with_restored_uids

CASE_ID = "ct"
# TotalSegmentator value -> name of the structures learnt; in this order they become 1..3. The
# three largest in the 20 slices (voxels at 0.98 x 0.98 x 2 mm: 366,708, 130,634 and 74,102);
# no kidney is in the field of view.
STRUCTURES = {5: "liver", 1: "spleen", 6: "stomach"}
# 4 mm voxels (125 x 125 x 10): resampled there and back the reference keeps Dice 0.98 (liver),
# 0.97 (spleen) and 0.95 (stomach). 2D slices of the whole field of view, 4 per batch.
PLAN_OPTIONS = PlanOptions(
    target_spacing=(4.0, 4.0, 4.0), patch_size_2d=(128, 128), batch_size_2d=4
)
NO_AUGMENTATION = {
    "rotation_probability": 0.0,
    "scale_probability": 0.0,
    "mirror_probability": 0.0,
    "mirror_axes": [],  # nor test-time mirroring
    "noise_probability": 0.0,
    "brightness_probability": 0.0,
    "contrast_probability": 0.0,
    "gamma_probability": 0.0,
}
TRAIN_SETTINGS: dict[str, object] = {
    "configuration": "2d",
    "network": {"deep_supervision": True, "base_filters": 8, "max_filters": 128},
    # Less cross-entropy and heavier spleen/stomach terms: the small organs are learnt within
    # about 50 steps instead of 150 to 250 (plain dice_ce).
    "loss": {"dice_ce": {"ce_weight": 0.3, "class_weights": [1.0, 1.0, 3.0, 5.0]}},
    "optimizer": "adamw",
    "learning_rate": 0.01,
    "weight_decay": 1.0e-4,
    "epochs": 1,
    "steps_per_epoch": 120,
    "checkpoint_every_steps": 1000,
    "num_workers": 0,
    "threads": 2,
    "augmentation": NO_AUGMENTATION,  # the model only ever sees this scan
    "experiment": "pacs-ct-model",
}


def cpu_has_bf16() -> bool:
    """Whether the CPU has native bfloat16 (AVX512-BF16 or AMX): bf16 autocast is then ~1.6x
    faster, elsewhere it is emulated and slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class CtModel:
    """A trained packaged model and what a test needs to check its predictions."""

    model_uri: str  # runs:/<id>/model, or models:/NAME/VERSION when registered
    tracking_uri: str
    run_id: str
    label_names: dict[int, str]  # 0 background, 1..n the structures
    reference: Volume  # the relabelled reference segmentation on the DICOM series' grid
    series_dir: Path  # the copy of the series (UIDs restored) the model was trained on
    registered_model_name: str | None = None
    version: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per step

    @property
    def champion_uri(self) -> str | None:
        """``models:/NAME@champion`` when registered, else None."""
        if self.registered_model_name is None:
            return None
        return f"models:/{self.registered_model_name}@champion"


def relabelled_reference(shared_data: Path) -> tuple[Volume, dict[int, str]]:
    """TotalSegmentator's reference of the example CT with ``STRUCTURES`` as 1..n, rest 0.

    On the grid ``medseg.io.dicom.read_dicom_series`` builds from the series (closest RAS).
    """
    names = json.loads((shared_data / REFERENCE / "dataset.json").read_text())["labels"]
    reference = read_nifti(shared_data / EXAMPLE / "example_seg_dicom.nii.gz").to_closest_ras()
    lookup = np.zeros(int(reference.array.max()) + 1, np.uint8)
    label_names = {0: "background"}
    for new, (old, name) in enumerate(STRUCTURES.items(), start=1):
        assert names[str(old)] == name, f"dataset.json names {old} {names[str(old)]!r}"
        lookup[old] = new
        label_names[new] = name
    return reference.with_array(lookup[reference.array]), label_names


def train_ct_model(
    shared_data: Path,
    folder: Path,
    *,
    tracking_uri: str | None = None,
    registered_model_name: str | None = None,
    train_overrides: dict[str, object] | None = None,
) -> CtModel:
    """Ingest, plan, preprocess and train on the example CT in ``folder``; log to MLflow.

    ``tracking_uri`` defaults to SQLite ``folder/mlflow.db``. With ``registered_model_name``
    the model is registered (aliases ``candidate`` and, see the module docstring,
    ``champion``) and ``model_uri`` is ``models:/NAME/VERSION``. ``train_overrides`` replace
    keys of ``TRAIN_SETTINGS`` (e.g. ``{"steps_per_epoch": 200}``).
    """
    folder = Path(folder)
    tracking_uri = tracking_uri or f"sqlite:///{folder.resolve()}/mlflow.db"
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    series_dir = folder / "dicom" / CASE_ID
    with_restored_uids(shared_data / EXAMPLE_CT, series_dir, seed="ct-model")
    reference, label_names = relabelled_reference(shared_data)
    write_nifti(reference, folder / "labels" / f"{CASE_ID}.nii.gz")
    report = ingest(
        folder / "dicom",
        folder / "ingested",
        case_ids=CaseIdScheme.FOLDER,
        labels_dir=folder / "labels",
        workers=1,
    )
    assert report.exit_code == 0, report.outcomes
    write_label_names(label_names, report.manifest_path)
    seconds["ingest"] = time.perf_counter() - start
    start = time.perf_counter()
    plan = plan_manifest(report.manifest_path, options=PLAN_OPTIONS)
    cache = folder / "cache"
    done = preprocess_manifest(report.manifest_path, plan=plan, cache_dir=cache)
    assert done.exit_code == 0, done.outcomes
    seconds["plan_preprocess"] = time.perf_counter() - start
    start = time.perf_counter()
    config = TrainConfig.model_validate(
        TRAIN_SETTINGS
        | {"cpu_bf16": cpu_has_bf16()}
        | (train_overrides or {})
        | {"registered_model_name": registered_model_name}
    )
    result = train(
        manifest_path=report.manifest_path,
        plan=plan,
        cache_dir=cache,
        config=config,
        run_dir=folder / "run",
        tracking_uri=tracking_uri,
    )
    seconds["train_and_log"] = time.perf_counter() - start
    assert result.run_id is not None
    if registered_model_name is not None:
        assert result.model_version is not None
        model_uri = f"models:/{registered_model_name}/{result.model_version}"
    else:
        model_uri = f"runs:/{result.run_id}/model"
    return CtModel(
        model_uri=model_uri,
        tracking_uri=tracking_uri,
        run_id=result.run_id,
        label_names=label_names,
        reference=reference,
        series_dir=series_dir,
        registered_model_name=registered_model_name,
        version=result.model_version,
        seconds=seconds,
    )
