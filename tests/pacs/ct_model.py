"""A small real segmentation model trained, in the test, on one CT series read from DICOM.

``train_ct_model`` ingests a ``TrainingScan`` (a DICOM series and its reference segmentation)
with the project's public API (ingest, plan_manifest, preprocess_manifest, train), which logs
the model to MLflow as a packaged medseg model, registered when a name is given. The network
overfits the one scan on purpose: it predicts real structures on that same CT, which is what
an end-to-end PACS test needs. Two scans:

- ``phantom_scan``: phantom ``PHANTOM_SEED`` of tests/phantoms.py as a JPEG 2000 lossless
  series (49 x 39 x 33 voxels at 3 x 3 x 4 mm), liver, kidneys and spine. The component tests
  use it; on one CPU core about 16 s with bfloat16 (a minute in float32), 100 steps, Dice 0.98
  to 0.99 for every structure.
- ``real_ct_scan``: TotalSegmentator's real 20-slice JPEG 2000 CT with its reference
  segmentation (liver, spleen and stomach relabelled 1..3), for the reference test; 120 steps,
  Dice 0.97/0.96/0.94 on the DICOM grid.

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
import pydicom
from pydicom.uid import generate_uid

from medseg.demo.dicom_writer import TransferSyntax
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
from tests.phantoms import small_phantom, write_phantom_dicom
from tests.real_ct import EXAMPLE, EXAMPLE_CT, REFERENCE, with_restored_uids

CASE_ID = "ct"
PHANTOM_SEED = 3
# Phantom value -> name of the structures learnt on the phantom; in this order they become 1..n.
# Not the spleen: 48 HU in soft tissue of 40 HU, it is found only after many more steps.
PHANTOM_STRUCTURES = {1: "liver", 3: "kidney_left", 4: "kidney_right", 5: "spine"}
# Less noise than the phantom's default 20 HU and no partial-volume blur: CT normalisation
# clips below the learnt structures' 0.5th percentile (the liver's 60 HU less the noise), so
# the blurred edge of a structure would look like background. Sharp, it is learnt within 100
# steps.
PHANTOM_NOISE_HU = 5.0
PHANTOM_PATIENT = ("FAKE-CT-MODEL", "FAKE^CTMODEL")  # PatientID, PatientName
# TotalSegmentator value -> name of the structures learnt on the real CT; in this order they
# become 1..3. The three largest in the 20 slices (voxels at 0.98 x 0.98 x 2 mm: 366,708,
# 130,634 and 74,102); no kidney is in the field of view.
REAL_CT_STRUCTURES = {5: "liver", 1: "spleen", 6: "stomach"}
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
    "optimizer": "adamw",
    "learning_rate": 0.01,
    "weight_decay": 1.0e-4,
    "epochs": 1,
    "checkpoint_every_steps": 1000,
    "num_workers": 0,
    # One thread: a second one gains little at these sizes, and when other processes compete
    # for the cores (tests in parallel) its spin-waiting makes training up to 9 times slower.
    "threads": 1,
    "augmentation": NO_AUGMENTATION,  # the model only ever sees this scan
    "experiment": "pacs-ct-model",
}


@dataclass(frozen=True)
class TrainingScan:
    """A CT series on disk, the segmentation a model learns from it and how it learns it."""

    series_dir: Path  # one DICOM series; its folder name becomes the case id
    reference: Volume  # on the grid medseg.io.dicom.read_dicom_series builds (closest RAS)
    label_names: dict[int, str]  # 0 background, 1..n the structures
    plan_options: PlanOptions
    train_settings: dict[str, object]  # on top of TRAIN_SETTINGS


def _relabelled(labels: Volume, structures: dict[int, str]) -> tuple[Volume, dict[int, str]]:
    """``labels`` with the values of ``structures`` as 1..n in their order, the rest 0, and the
    names of the new values."""
    lookup = np.zeros(int(labels.array.max()) + 1, np.uint8)
    label_names = {0: "background"}
    for new, (old, name) in enumerate(structures.items(), start=1):
        lookup[old] = new
        label_names[new] = name
    return labels.with_array(lookup[labels.array]), label_names


def phantom_scan(folder: Path) -> TrainingScan:
    """Phantom ``PHANTOM_SEED`` as a JPEG 2000 series in ``folder/dicom/ct`` and its reference
    with ``PHANTOM_STRUCTURES`` as 1..n, rest 0.

    A 3D network on nearly the whole scan at the native 3 x 3 x 4 mm, one patch per batch (a
    second one is nearly the same crop), 100 steps: Dice 0.98 to 0.99 for every structure with
    bfloat16 and float32 (0.91 to 0.99 over other seeds). A 2D network is less reliable here
    (liver Dice 0.62 to 0.96 over seeds after 150 steps); with 60 steps a kidney is sometimes
    never learnt.
    """
    series_dir = Path(folder) / "dicom" / CASE_ID
    patient_id, patient_name = PHANTOM_PATIENT
    write_phantom_dicom(
        series_dir,
        PHANTOM_SEED,
        patient_id=patient_id,
        patient_name=patient_name,
        transfer_syntax=TransferSyntax.JPEG2000_LOSSLESS,
        noise_sigma_hu=PHANTOM_NOISE_HU,
        smoothing_sigma_vox=0.0,
    )
    reference, label_names = _relabelled(small_phantom(PHANTOM_SEED)[1], PHANTOM_STRUCTURES)
    return TrainingScan(
        series_dir=series_dir,
        reference=reference,
        label_names=label_names,
        plan_options=PlanOptions(
            target_spacing=(3.0, 3.0, 4.0), patch_size_3d=(48, 40, 32), batch_size_3d=1
        ),
        train_settings={
            "configuration": "3d",
            "steps_per_epoch": 100,
            # heavier kidney terms: the smallest structures are learnt as fast as the liver
            "loss": {"dice_ce": {"ce_weight": 0.3, "class_weights": [1, 1, 4, 4, 1]}},
        },
    )


def real_ct_scan(shared_data: Path, folder: Path) -> TrainingScan:
    """TotalSegmentator's example CT (UIDs restored) in ``folder/dicom/ct`` and its reference
    with ``REAL_CT_STRUCTURES`` as 1..n, rest 0.

    4 mm voxels (125 x 125 x 10): resampled there and back the reference keeps Dice 0.98
    (liver), 0.97 (spleen) and 0.95 (stomach). 2D slices of the whole field of view, 4 per
    batch; 120 steps.
    """
    series_dir = Path(folder) / "dicom" / CASE_ID
    with_restored_uids(shared_data / EXAMPLE_CT, series_dir, seed="ct-model")
    names = json.loads((shared_data / REFERENCE / "dataset.json").read_text())["labels"]
    for old, name in REAL_CT_STRUCTURES.items():
        assert names[str(old)] == name, f"dataset.json names {old} {names[str(old)]!r}"
    full = read_nifti(shared_data / EXAMPLE / "example_seg_dicom.nii.gz").to_closest_ras()
    reference, label_names = _relabelled(full, REAL_CT_STRUCTURES)
    return TrainingScan(
        series_dir=series_dir,
        reference=reference,
        label_names=label_names,
        plan_options=PlanOptions(
            target_spacing=(4.0, 4.0, 4.0), patch_size_2d=(128, 128), batch_size_2d=4
        ),
        train_settings={
            "steps_per_epoch": 120,
            # Less cross-entropy and heavier spleen/stomach terms: the small organs are learnt
            # within about 50 steps instead of 150 to 250 (plain dice_ce).
            "loss": {"dice_ce": {"ce_weight": 0.3, "class_weights": [1.0, 1.0, 3.0, 5.0]}},
        },
    )


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
    reference: Volume  # the reference segmentation on the DICOM series' grid
    series_dir: Path  # the series the model was trained on
    registered_model_name: str | None = None
    version: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per step

    @property
    def champion_uri(self) -> str | None:
        """``models:/NAME@champion`` when registered, else None."""
        if self.registered_model_name is None:
            return None
        return f"models:/{self.registered_model_name}@champion"


def train_ct_model(
    scan: TrainingScan,
    folder: Path,
    *,
    tracking_uri: str | None = None,
    registered_model_name: str | None = None,
    train_overrides: dict[str, object] | None = None,
) -> CtModel:
    """Ingest, plan, preprocess and train on ``scan`` in ``folder``; log to MLflow.

    ``tracking_uri`` defaults to SQLite ``folder/mlflow.db``. With ``registered_model_name``
    the model is registered (aliases ``candidate`` and, see the module docstring,
    ``champion``) and ``model_uri`` is ``models:/NAME/VERSION``. ``train_overrides`` replace
    keys of the training settings (e.g. ``{"steps_per_epoch": 200}``).
    """
    folder = Path(folder)
    tracking_uri = tracking_uri or f"sqlite:///{folder.resolve()}/mlflow.db"
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    labels_dir = folder / "labels"
    write_nifti(scan.reference, labels_dir / f"{scan.series_dir.name}.nii.gz")
    report = ingest(
        scan.series_dir.parent,
        folder / "ingested",
        case_ids=CaseIdScheme.FOLDER,
        labels_dir=labels_dir,
        workers=1,
    )
    assert report.exit_code == 0, report.outcomes
    write_label_names(scan.label_names, report.manifest_path)
    seconds["ingest"] = time.perf_counter() - start
    start = time.perf_counter()
    plan = plan_manifest(report.manifest_path, options=scan.plan_options)
    cache = folder / "cache"
    done = preprocess_manifest(report.manifest_path, plan=plan, cache_dir=cache)
    assert done.exit_code == 0, done.outcomes
    seconds["plan_preprocess"] = time.perf_counter() - start
    start = time.perf_counter()
    config = TrainConfig.model_validate(
        TRAIN_SETTINGS
        | scan.train_settings
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
        label_names=scan.label_names,
        reference=scan.reference,
        series_dir=scan.series_dir,
        registered_model_name=registered_model_name,
        version=result.model_version,
        seconds=seconds,
    )


def copy_with_new_uids(source_dir: Path, target_dir: Path, *, seed: str) -> list[Path]:
    """Copy a series as another study of the same images: new study, series, frame of
    reference and instance UIDs (deterministic from ``seed``). Returns the copies, by name."""
    target_dir.mkdir(parents=True)
    study, series, frame = (generate_uid(entropy_srcs=[seed, role]) for role in "sfr")
    copies = []
    for path in sorted(p for p in source_dir.iterdir() if p.is_file()):
        dataset = pydicom.dcmread(path)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        dataset.FrameOfReferenceUID = frame
        dataset.SOPInstanceUID = generate_uid(entropy_srcs=[seed, str(dataset.SOPInstanceUID)])
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.save_as(target_dir / path.name, enforce_file_format=True)
        copies.append(target_dir / path.name)
    return copies
