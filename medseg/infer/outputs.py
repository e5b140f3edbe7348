"""What ``predict`` writes for a scan besides its label map and volumes: the choice of outputs
(``ScanOutputs``), their file names, and the writer of the surface meshes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medseg.io.formats import output_name
from medseg.io.meshes import structure_meshes, write_obj, write_stl
from medseg.volume import Volume

MESHES_SUFFIX = ".meshes"
RTSTRUCT_SUFFIX = "_rtstruct.dcm"


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
    """

    output_format: str = "nifti"
    dicom_seg: bool = True
    probabilities: bool = False
    meshes: bool = False
    rtstruct: bool = False


def output_names(case_id: str, output_format: str = "nifti") -> list[str]:
    """Every file or folder ``predict_task`` may write for ``case_id``, the label map (in
    ``output_format``) last."""
    suffixes = (".volumes.json", "_seg.dcm", ".probabilities.npz", MESHES_SUFFIX, RTSTRUCT_SUFFIX)
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
