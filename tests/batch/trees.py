"""Build small trees of scans for batch tests: phantom CTs as NIfTI files and as DICOM series,
and corrupt files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tests.phantoms import write_phantom_dicom, write_phantom_nifti

PHANTOM_SEEDS = list(range(10))


@dataclass
class ScanTree:
    """A folder of scans being built; remembers which inputs are good and which are corrupt."""

    root: Path
    good: dict[str, int] = field(default_factory=dict)  # relative path -> phantom seed
    corrupt: list[str] = field(default_factory=list)

    def nifti(self, relative: str, seed: int) -> Path:
        """Write phantom ``seed`` as a NIfTI file ``relative``."""
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write_phantom_nifti(path, seed)
        self.good[relative] = seed
        return path

    def dicom(self, relative: str, seed: int) -> list[Path]:
        """Write phantom ``seed`` as a CT DICOM series into folder ``relative``."""
        paths = write_phantom_dicom(self.root / relative, seed)
        self.good[relative] = seed
        return paths

    def truncated_nifti(self, relative: str, seed: int) -> Path:
        """The first half of a phantom's ``.nii.gz``: a transfer cut short."""
        path = self.nifti(relative, seed)
        del self.good[relative]
        data = path.read_bytes()
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
