"""Write one ingested case (image, optional label, JSON sidecar) and read it back for resuming.

The sidecar is written last, after the image and label: its presence with a matching input
fingerprint is what marks a case as complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg import __version__
from medseg.errors import GeometryMismatchError, ManifestError, NonIntegralLabelError
from medseg.io.atomic import write_json_atomic
from medseg.io.nifti import write_nifti
from medseg.manifest import ManifestRecord, label_values, manifest_spacing, sha256_file
from medseg.volume import Volume


@dataclass(frozen=True)
class ConvertedCase:
    """Where one case's outputs live under the ingest output folder."""

    out_dir: Path
    case_id: str

    @property
    def image_path(self) -> Path:
        return self.out_dir / "images" / f"{self.case_id}.nii.gz"

    @property
    def label_path(self) -> Path:
        return self.out_dir / "labels" / f"{self.case_id}.nii.gz"

    @property
    def sidecar_path(self) -> Path:
        return self.out_dir / "images" / f"{self.case_id}.json"

    def sidecar(self) -> dict[str, Any] | None:
        """The case's sidecar, or None when absent or unreadable."""
        try:
            return json.loads(self.sidecar_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def is_current(self, fingerprint: str) -> bool:
        """True when the case was completely written from inputs with this fingerprint."""
        sidecar = self.sidecar()
        if sidecar is None or sidecar.get("input_fingerprint") != fingerprint:
            return False
        if not self.image_path.exists():
            return False
        return sidecar.get("label_sha256") is None or self.label_path.exists()

    def record(self) -> ManifestRecord:
        """The manifest record of a completely written case, from its sidecar.

        Raises:
            ManifestError: the case's sidecar is missing or unreadable.
        """
        sidecar = self.sidecar()
        if sidecar is None:
            raise ManifestError(f"{self.sidecar_path}: missing or unreadable sidecar")
        has_label = sidecar.get("label_sha256") is not None
        return ManifestRecord(
            case_id=self.case_id,
            image=f"images/{self.case_id}.nii.gz",
            label=f"labels/{self.case_id}.nii.gz" if has_label else None,
            sha256=sidecar["sha256"],
            label_sha256=sidecar.get("label_sha256"),
            modality=str(sidecar.get("modality", "unknown")),
            shape=list(sidecar["shape"]),
            spacing=list(sidecar["spacing"]),
            source=sidecar["source"],
            split=None,
            extra=_record_extra(sidecar),
        )


def check_label(label: Volume, image: Volume, *, path: Path) -> Volume:
    """Return ``label`` as an integer map after checking it lies on ``image``'s grid.

    Raises:
        GeometryMismatchError: different shape or affine (more than 1e-3 mm apart).
    """
    if not label.same_grid(image):
        raise GeometryMismatchError(
            f"{path}: label grid {label.shape[:3]} does not match the scan's {image.shape[:3]} "
            f"(max affine difference {np.abs(label.affine_ras - image.affine_ras).max():.4g} mm)"
        )
    try:
        values = label_values(label.array)
    except NonIntegralLabelError as exc:
        raise GeometryMismatchError(f"{path}: label map is not integral: {exc}") from exc
    dtype = np.uint8 if max(values, default=0) < 256 and min(values, default=0) >= 0 else np.int32
    return label.with_array(label.array.astype(dtype))


def _record_extra(sidecar: dict) -> dict:
    """A record's ``extra``: the corrections made, and a multi-channel case's channel names."""
    extra = {}
    if sidecar.get("corrections"):
        extra["corrections"] = sidecar["corrections"]
    if "channel_names" in sidecar.get("metadata", {}):
        extra["channel_names"] = sidecar["metadata"]["channel_names"]
    return extra


def write_case(
    case: ConvertedCase,
    volume: Volume,
    *,
    label: Volume | None,
    fingerprint: str,
    source_hash: str,
) -> ManifestRecord:
    """Write image, label and sidecar (in that order, each atomically); return the record."""
    write_nifti(volume, case.image_path)
    label_sha256 = None
    if label is not None:
        write_nifti(label, case.label_path)
        label_sha256 = sha256_file(case.label_path)
    metadata = {k: v for k, v in volume.metadata.items() if k not in ("corrections",)}
    sidecar = {
        "case_id": case.case_id,
        "medseg_version": __version__,
        "input_fingerprint": fingerprint,
        "source": source_hash,
        "modality": str(volume.metadata.get("modality", "unknown")),
        "shape": list(volume.shape),
        "spacing": manifest_spacing(volume),
        "orientation": volume.orientation,
        "affine_ras": np.round(volume.affine_ras, 6).tolist(),
        "dtype": str(volume.array.dtype),
        "sha256": sha256_file(case.image_path),
        "label_sha256": label_sha256,
        "corrections": list(volume.metadata.get("corrections", [])),
        "metadata": metadata,
    }
    write_json_atomic(case.sidecar_path, sidecar)
    return case.record()
