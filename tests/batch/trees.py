"""Build small trees of real scans for batch tests: MSD hippocampus NIfTI files, the same
volumes written as DICOM series, and corrupt files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.demo.dicom_writer import write_dicom_series
from medseg.io.nifti import read_nifti

HIPPOCAMPUS_CASES = [
    "hippocampus_001",
    "hippocampus_003",
    "hippocampus_004",
    "hippocampus_006",
    "hippocampus_008",
    "hippocampus_011",
    "hippocampus_014",
    "hippocampus_015",
    "hippocampus_019",
    "hippocampus_020",
]


@dataclass
class ScanTree:
    """A folder of scans being built; remembers which inputs are good and which are corrupt."""

    root: Path
    shared_data: Path
    good: dict[str, str] = field(default_factory=dict)  # relative path -> hippocampus case
    corrupt: list[str] = field(default_factory=list)

    def _image(self, case: str) -> Path:
        return self.shared_data / "msd_hippocampus" / "images" / f"{case}.nii.gz"

    def nifti(self, relative: str, case: str) -> Path:
        """Copy the hippocampus image ``case`` to ``relative``."""
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self._image(case).read_bytes())
        self.good[relative] = case
        return path

    def dicom(self, relative: str, case: str) -> list[Path]:
        """Write the hippocampus image ``case`` as a DICOM series into folder ``relative``."""
        volume = read_nifti(self._image(case))
        paths = write_dicom_series(
            volume.with_array(volume.array.astype(np.int16)),
            self.root / relative,
            series_description="t1",
            patient_id="X",
            rescale_intercept=0.0,
        )
        self.good[relative] = case
        return paths

    def truncated_nifti(self, relative: str, case: str) -> Path:
        """The first half of a real ``.nii.gz``: a transfer cut short."""
        data = self._image(case).read_bytes()
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[: len(data) // 2])
        self.corrupt.append(relative)
        return path

    def garbage(self, relative: str) -> Path:
        """A ``.dcm`` file holding random bytes."""
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(np.random.default_rng(0).bytes(2000))
        self.corrupt.append(relative)
        return path
