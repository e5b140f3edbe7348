"""Manifest cases as an nnU-Net v2 raw dataset, and the environment nnU-Net's commands need.

Images are linked as ``imagesTr/<case>_0000.nii.gz``; labels are rewritten as uint8 on the
image's grid (``labelsTr/<case>.nii.gz``), since two MSD hippocampus labels are float32 files.
A label whose values are not whole numbers is refused, never rounded.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

NNUNET_DATASET_ID = 4  # MSD Task04, as nnU-Net's own conversion numbers it
NNUNET_DATASET = f"Dataset{NNUNET_DATASET_ID:03d}_Hippocampus"


def nnunet_environment(folder: Path, *, processes: int = 2) -> dict[str, str]:
    """The environment for nnU-Net's commands: its three folders under ``folder``,
    ``processes`` workers for preprocessing and data augmentation, no torch.compile."""
    return {
        **os.environ,
        "nnUNet_raw": str(folder / "raw"),
        "nnUNet_preprocessed": str(folder / "preprocessed"),
        "nnUNet_results": str(folder / "results"),
        "nnUNet_n_proc_DA": str(processes),
        "nnUNet_def_n_proc": str(processes),
        "nnUNet_compile": "f",
    }


def nnunet_image_name(case_id: str) -> str:
    """The file name of a case's only channel (``<case>_0000.nii.gz``)."""
    return f"{case_id}_0000.nii.gz"


def write_uint8_label(source: Path, target: Path) -> None:
    """``source`` as uint8 with the same geometry.

    Raises:
        ValueError: a value is not a whole number in [0, 255].
    """
    image = sitk.ReadImage(str(source))
    array = sitk.GetArrayFromImage(image)
    if (
        not np.all(np.isfinite(array))
        or np.any(array != np.round(array))
        or array.min() < 0
        or array.max() > 255
    ):
        raise ValueError(f"{source}: label values are not whole numbers in [0, 255]")
    converted = sitk.GetImageFromArray(array.astype(np.uint8))
    converted.CopyInformation(image)
    sitk.WriteImage(converted, str(target), useCompression=True)


def write_nnunet_dataset(
    folder: Path, *, training: list[tuple[str, Path, Path]], label_names: dict[int, str]
) -> None:
    """``folder`` (``nnUNet_raw/DatasetXXX_Name``) with ``training`` (case id, image, label)
    in imagesTr/labelsTr and a dataset.json for one MR channel (z-score normalization)."""
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for case_id, image, label in training:
        (folder / "imagesTr" / nnunet_image_name(case_id)).symlink_to(image)
        write_uint8_label(label, folder / "labelsTr" / f"{case_id}.nii.gz")
    dataset = {
        "channel_names": {"0": "MRI"},
        "labels": {name: value for value, name in sorted(label_names.items())},
        "numTraining": len(training),
        "file_ending": ".nii.gz",
        "name": NNUNET_DATASET,
        "reference": "Medical Segmentation Decathlon, Task04_Hippocampus",
        "licence": "CC BY-SA 4.0",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
