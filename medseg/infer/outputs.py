"""What ``predict`` writes for a scan besides its label map and volumes: the choice of outputs
(``ScanOutputs``), their file names, and the writers of the surface meshes and the radiomics
features."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from medseg.evaluate.radiomics import FEATURE_NAMES, RadiomicsSettings, structure_radiomics
from medseg.io.atomic import write_json_atomic, write_text_atomic
from medseg.io.formats import output_name
from medseg.io.meshes import structure_meshes, write_obj, write_stl
from medseg.io.probabilities import PROBABILITIES_SUFFIX
from medseg.volume import Volume

MESHES_SUFFIX = ".meshes"
RTSTRUCT_SUFFIX = "_rtstruct.dcm"
RADIOMICS_SUFFIXES = (".radiomics.json", ".radiomics.csv")
UNCERTAINTY_SUFFIX = ".uncertainty.nii.gz"


@dataclass(frozen=True)
class ScanOutputs:
    """The outputs of a scan beyond ``<case_id>.volumes.json``.

    Attributes:
        output_format: the label map's format (``nifti``, ``nrrd``, ``mha``...:
            ``medseg.io.formats``).
        dicom_seg: a DICOM SEG ``<case_id>_seg.dcm`` for DICOM inputs.
        probabilities: ``<case_id>.probabilities.npz`` (float16, every class on the scan's
            grid: K x voxels x 2 bytes).
        meshes: ``<case_id>.meshes/<structure>.stl`` and ``.obj`` for every structure found (LPS
            millimetres, ``medseg.io.meshes``), and ``surface_area_mm2`` in the volumes.
        rtstruct: a DICOM RT Structure Set ``<case_id>_rtstruct.dcm`` for DICOM inputs
            (``medseg.io.dicom.rtstruct``); a warning for other inputs.
        radiomics: ``<case_id>.radiomics.json`` and ``.radiomics.csv``, the shape and
            first-order radiomics features of every structure (``medseg.evaluate.radiomics``).
        uncertainty: ``<case_id>.uncertainty.nii.gz``, the voxel-wise normalised entropy of
            the class probabilities on the scan's grid (``medseg.infer.confidence``), 8-bit
            with scl_slope 1/255 (NIfTI has no float16).
    """

    output_format: str = "nifti"
    dicom_seg: bool = True
    probabilities: bool = False
    meshes: bool = False
    rtstruct: bool = False
    radiomics: bool = False
    uncertainty: bool = False


def output_names(case_id: str, output_format: str = "nifti") -> list[str]:
    """Every file or folder ``predict_task`` may write for ``case_id``, the label map (in
    ``output_format``) last."""
    suffixes = (
        ".volumes.json",
        "_seg.dcm",
        PROBABILITIES_SUFFIX,
        MESHES_SUFFIX,
        RTSTRUCT_SUFFIX,
        *RADIOMICS_SUFFIXES,
        UNCERTAINTY_SUFFIX,
    )
    return [*(f"{case_id}{suffix}" for suffix in suffixes), output_name(case_id, output_format)]


def write_meshes(labels: Volume, label_names: dict[int, str], folder: Path) -> dict[str, float]:
    """An STL and an OBJ file per structure found in ``labels`` into ``folder``; the surface
    area (mm²) of each."""
    areas = {}
    for name, mesh in structure_meshes(labels, label_names).items():
        write_stl(mesh, folder / f"{name}.stl", name=name)
        write_obj(mesh, folder / f"{name}.obj", name=name)
        areas[name] = round(mesh.area_mm2, 2)
    return areas


def write_radiomics(
    labels: Volume, image: Volume, label_names: dict[int, str], *, out_dir: Path, case_id: str
) -> list[Path]:
    """``<case_id>.radiomics.json`` (``settings`` and ``structures``: {structure: {feature:
    value}}, null for an absent structure's) and ``<case_id>.radiomics.csv`` (a row per
    structure: case_id, structure, label, the features; empty cells for an absent one), both
    written atomically, with the features of every structure > 0 on the scan's values.

    Raises:
        GeometryMismatchError: ``image`` is not on the label map's grid.
    """
    settings = RadiomicsSettings()
    features = structure_radiomics(labels, image, label_names=label_names, settings=settings)
    known = {
        name: {k: None if math.isnan(v) else v for k, v in f.items()}
        for name, f in features.items()
    }
    json_path, csv_path = (out_dir / f"{case_id}{suffix}" for suffix in RADIOMICS_SUFFIXES)
    write_json_atomic(json_path, {"settings": settings.record(), "structures": known})
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["case_id", "structure", "label", *FEATURE_NAMES])
    values = {name: value for value, name in label_names.items()}
    for name, row in known.items():
        cells = ["" if row[k] is None else repr(row[k]) for k in FEATURE_NAMES]
        writer.writerow([case_id, name, values[name], *cells])
    write_text_atomic(csv_path, table.getvalue())
    return [json_path, csv_path]
