"""The on-disk preprocessing cache: arrays training can memory-map, plus per-case records.

Layout (``CACHE``)::

    plan.json                       the plan the cache was built with
    cases/<case_id>/image.npy       (C, X, Y, Z) float32
    cases/<case_id>/label.npy       (X, Y, Z) uint8/uint16, when labelled
    cases/<case_id>/weights.npy     (X, Y, Z) float32 border-weight map, when enabled
    cases/<case_id>/locations.npz   foreground voxel coordinates per label value
    cases/<case_id>/properties.json how to map predictions back to the original scan
    cases/<case_id>/done.json       written last: input checksums + plan digest

A case is complete only when ``done.json`` exists and matches the current inputs and plan;
every file is written atomically, so an interrupted run never leaves a case that looks done.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from medseg import __version__
from medseg.errors import InputFileError
from medseg.io.atomic import atomic_path, write_json_atomic
from medseg.preprocess.case import CaseProperties, PreprocessedCase


@dataclass(frozen=True)
class CachedCase:
    """Paths of one case in the cache."""

    root: Path
    case_id: str

    @property
    def folder(self) -> Path:
        return self.root / "cases" / self.case_id

    def file(self, name: str) -> Path:
        """Path of one of the case's files."""
        return self.folder / name

    def input_record(
        self, *, image_sha256: str, label_sha256: str | None, plan_digest: str
    ) -> dict:
        """What ``done.json`` records about the inputs."""
        return {
            "image_sha256": image_sha256,
            "label_sha256": label_sha256,
            "plan_digest": plan_digest,
            "medseg_version": __version__,
        }

    def is_current(self, record: dict) -> bool:
        """True when the case was completely written from exactly these inputs."""
        try:
            done = json.loads(self.file("done.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return done == record and self.file("image.npy").exists()

    def write(self, case: PreprocessedCase, *, weights: np.ndarray | None, record: dict) -> None:
        """Write every array and record of ``case``; ``done.json`` last."""
        self.file("done.json").unlink(missing_ok=True)
        _save_npy(self.file("image.npy"), case.image)
        if case.label is not None:
            _save_npy(self.file("label.npy"), case.label)
        if weights is not None:
            _save_npy(self.file("weights.npy"), weights.astype(np.float32))
        with atomic_path(self.file("locations.npz")) as tmp:
            np.savez(tmp, allow_pickle=True, **{str(k): v for k, v in case.class_locations.items()})
        write_json_atomic(self.file("properties.json"), case.properties.to_dict())
        write_json_atomic(self.file("done.json"), record)

    def load(self, *, mmap: bool = True) -> LoadedCase:
        """The case's arrays (memory-mapped by default) and records."""
        mode: Literal["r"] | None = "r" if mmap else None
        label = self.file("label.npy")
        weights = self.file("weights.npy")
        with np.load(self.file("locations.npz")) as archive:
            locations = {int(k): archive[k] for k in archive.files}
        properties = json.loads(self.file("properties.json").read_text(encoding="utf-8"))
        return LoadedCase(
            case_id=self.case_id,
            image=np.load(self.file("image.npy"), mmap_mode=mode),
            label=np.load(label, mmap_mode=mode) if label.exists() else None,
            weights=np.load(weights, mmap_mode=mode) if weights.exists() else None,
            class_locations=locations,
            properties=CaseProperties(**properties),
        )


@dataclass
class LoadedCase:
    """A cached case as training and inference read it."""

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    weights: np.ndarray | None
    class_locations: dict[int, np.ndarray]
    properties: CaseProperties


def load_cache(cache_dir: Path, case_ids: list[str] | None = None) -> list[LoadedCase]:
    """Memory-map the complete cases of a cache (all, or ``case_ids`` in that order).

    Raises:
        InputFileError: a requested case is missing or incomplete.
    """
    root = Path(cache_dir)
    if case_ids is None:
        case_ids = sorted(p.parent.name for p in (root / "cases").glob("*/done.json"))
    cases = []
    for case_id in case_ids:
        cached = CachedCase(root, case_id)
        if not cached.file("done.json").exists():
            raise InputFileError(cached.folder, "case missing or incomplete in the cache")
        cases.append(cached.load())
    return cases


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, np.ascontiguousarray(array), allow_pickle=False)
