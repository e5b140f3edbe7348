"""Pair predicted and reference label maps by case name; report unpaired cases, never skip them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import InputFileError, MedsegError
from medseg.io.formats import is_volume_path, read_volume, volume_files_named, volume_stem


@dataclass
class Pairing:
    """Matched (case id, prediction, reference) triples and the cases missing on one side."""

    pairs: list[tuple[str, Path, Path]] = field(default_factory=list)
    missing_prediction: list[str] = field(default_factory=list)
    missing_reference: list[str] = field(default_factory=list)


def _by_case(path: Path) -> dict[str, Path]:
    """Label maps in ``path`` by case: ``<case>.nii.gz`` files, and ``<case>/<case>.nii.gz``
    (the per-scan folders of ``medseg batch``), in any registered volume format (``.nrrd``,
    ``.mha``...).

    Raises:
        InputFileError: ``path`` does not exist, or holds two label maps of one case.
    """
    if path.is_file():
        return {volume_stem(path): path}
    if not path.is_dir():
        raise InputFileError(path, "no such file or folder")
    found: dict[str, Path] = {}
    for entry in sorted(path.iterdir()):
        if entry.is_file() and is_volume_path(entry):
            case = volume_stem(entry)
            if case in found:
                raise InputFileError(
                    path, f"both {found[case].name} and {entry.name} are label maps of {case}"
                )
            found[case] = entry
        elif entry.is_dir() and not entry.name.startswith("."):
            nested = volume_files_named(entry, entry.name)
            if nested:
                found.setdefault(entry.name, nested[0])
    return found


def pair_label_maps(predictions: Path, references: Path) -> Pairing:
    """Pair by file name without its format's suffix (``.nii.gz``, ``.nrrd``...); two single
    files always pair.

    Raises:
        InputFileError: a path does not exist, or the references are a folder without label
            maps (predictions without any are reported as missing, case by case).
    """
    if predictions.is_file() and references.is_file():
        return Pairing(pairs=[(volume_stem(references), predictions, references)])
    predicted, reference = _by_case(predictions), _by_case(references)
    if not reference:
        raise InputFileError(references, "no label maps (<case>.nii.gz or <case>/<case>.nii.gz)")
    return Pairing(
        pairs=[
            (case, predicted[case], reference[case])
            for case in sorted(set(predicted) & set(reference))
        ],
        missing_prediction=sorted(set(reference) - set(predicted)),
        missing_reference=sorted(set(predicted) - set(reference)),
    )


def reference_label_names(pairing: Pairing) -> dict[int, str]:
    """``label_<value>`` names of every value in the references (0: ``background``).

    An unreadable reference is passed over: its case fails in the evaluation and is reported.
    """
    values: set[int] = {0}
    for _, _, reference in pairing.pairs:
        try:
            values |= {int(value) for value in np.unique(read_volume(reference).array)}
        except MedsegError:
            continue
    return {value: "background" if value == 0 else f"label_{value}" for value in sorted(values)}
