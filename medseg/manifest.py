"""Data manifests: one JSON object per case in a ``*.jsonl`` file.

A manifest names exactly which files a stage works on, with checksums, geometry and split, so
that training, evaluation and benchmarks agree on the data. One line (wrapped here) reads::

    {"case_id":"hippocampus_001","image":"msd_hippocampus/images/hippocampus_001.nii.gz",
     "label":"msd_hippocampus/labels/hippocampus_001.nii.gz","sha256":"9f2c...",
     "label_sha256":"41d0...","modality":"MR","shape":[35,51,35],"spacing":[1.0,1.0,1.0],
     "source":"6be0a1c3f7d2e915","split":"train","extra":{"label_values":[0,1,2]}}

Path convention:

* ``image`` and ``label`` are relative POSIX paths, never absolute, so a manifest is valid on
  every machine and leaks no user or patient names through folder names.
* They are relative to the manifest's own folder, unless the reader passes a ``data_root``:
  then they are relative to that. Manifests committed under ``data_manifests/`` use a data
  root, because the data lives outside the repository (e.g. ``../shared/data``).
  ``resolve`` applies this rule and ``manifest_relative_path`` is its inverse; nothing else
  should join manifest paths by hand.

Other rules:

* Records are written sorted by ``case_id``, one compact JSON object per line; case ids are
  unique. Every field except ``extra`` is required (``null`` where allowed).
* ``sha256``/``label_sha256`` are SHA-256 hex digests of the files' bytes
  (``volume_sha256``); for a detached header (``.nhdr``, ``.mhd``) naming a data file, the
  digest covers the data file(s) too: SHA-256 of the header's and the data files' digests, so a
  changed ``.raw`` changes it.
* ``shape`` is the image's array shape; ``spacing`` the voxel size in mm along i, j, k (column
  norms of the affine, rounded to 1e-6 mm).
* ``source`` is ``medseg.phi.hash_identifier`` of where the case came from, never a raw path.
* ``split`` is ``"train"``, ``"val"``, ``"test"`` or null; a case without label is never
  ``"train"`` or ``"val"``.
* Label names are dataset-wide, so they live in a sidecar ``<name>.labels.json`` beside
  ``<name>.jsonl`` (``label_names_path``), not in every record. A label named ``ignore``, the
  highest value, marks unannotated voxels (``ignore_label_value``). A region-based dataset
  (``medseg.regions``) adds ``"regions": {"<name>": [<values>]}`` and ``"regions_class_order"``
  to the sidecar (``read_regions``); its ``"labels"`` name the values the regions paint.
* ``extra`` holds anything else, e.g. ``label_values``: the label values present in the case,
  and for a multi-channel case (``shape`` ``[X, Y, Z, C]``) ``channel_names``: one name per
  channel, in order (``["T1", "T2"]``); checked when present.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import reprlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, TypeGuard

import numpy as np

from medseg.errors import (
    IgnoreLabelError,
    ManifestError,
    NonIntegralLabelError,
    RegionsError,
    SplitFractionsError,
)
from medseg.io.atomic import write_text_atomic
from medseg.io.formats import data_files
from medseg.regions import RegionSet, is_region_declaration, parse_regions
from medseg.volume import Volume

logger = logging.getLogger(__name__)

SPACING_DECIMALS = 6
SPACING_ATOL_MM = 1e-5


class Split(StrEnum):
    """The data split a case belongs to."""

    TRAIN = "train"
    VAL = "val"
    TEST = "test"


@dataclass
class ManifestRecord:
    """One case: where its files are, what they hold, and which split it belongs to."""

    case_id: str
    image: str
    label: str | None
    sha256: str
    label_sha256: str | None
    modality: str
    shape: list[int]
    spacing: list[float]
    source: str
    split: str | None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The record as one compact JSON line (no newline)."""
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)


def _is_text(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and value != ""


def _is_relative_path(value: object) -> bool:
    return (
        _is_text(value)
        and not PurePosixPath(value).is_absolute()
        and not PureWindowsPath(value).is_absolute()
    )


def _is_digest(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= set("0123456789abcdef")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_shape(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) in (3, 4)
        and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in value)
    )


def _is_spacing(value: object) -> bool:
    return (
        isinstance(value, list) and len(value) == 3 and all(_is_number(v) and v > 0 for v in value)
    )


def _optional(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: value is None or check(value)


# Field name -> (check, what the value must be). Order follows ManifestRecord.
_FIELD_RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "case_id": (_is_text, "a non-empty string"),
    "image": (_is_relative_path, "a relative path"),
    "label": (_optional(_is_relative_path), "a relative path or null"),
    "sha256": (_is_digest, "64 lowercase hex digits"),
    "label_sha256": (_optional(_is_digest), "64 lowercase hex digits or null"),
    "modality": (_is_text, "a non-empty string"),
    "shape": (_is_shape, "a list of 3 or 4 positive integers"),
    "spacing": (_is_spacing, "a list of 3 positive numbers (mm)"),
    "source": (_is_text, "a non-empty string"),
    "split": (
        _optional(lambda v: isinstance(v, str) and v in set(Split)),
        "one of train, val, test or null",
    ),
    "extra": (lambda v: isinstance(v, dict), "an object"),
}
_OPTIONAL_FIELDS = {"extra"}


def _check_payload(payload: Mapping[str, Any], *, where: str) -> None:
    """Raise ``ManifestError`` naming ``where`` unless ``payload`` is a valid record."""
    missing = [
        name for name in _FIELD_RULES if name not in payload and name not in _OPTIONAL_FIELDS
    ]
    if missing:
        raise ManifestError(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(payload) - set(_FIELD_RULES))
    if unknown:
        raise ManifestError(
            f"{where}: unknown field(s) {', '.join(unknown)} (put other information under 'extra')"
        )
    for name, (is_valid, expected) in _FIELD_RULES.items():
        if name in payload and not is_valid(payload[name]):
            got = reprlib.repr(payload[name])
            raise ManifestError(f"{where}: field '{name}' must be {expected}, got {got}")
    if (payload["label"] is None) != (payload["label_sha256"] is None):
        raise ManifestError(f"{where}: 'label' and 'label_sha256' must both be set or both null")
    channel_names = payload.get("extra", {}).get("channel_names")
    if channel_names is not None and not (
        isinstance(channel_names, list)
        and all(_is_text(name) for name in channel_names)
        and len(payload["shape"]) == 4
        and len(channel_names) == payload["shape"][3]
    ):
        raise ManifestError(
            f"{where}: 'extra.channel_names' must list one name per channel of a 4D 'shape' "
            f"[X, Y, Z, C], got {reprlib.repr(channel_names)} for shape {payload['shape']}"
        )
    if payload["label"] is None and payload["split"] in (Split.TRAIN, Split.VAL):
        raise ManifestError(
            f"{where}: a case without label cannot be in split '{payload['split']}'"
        )


def _parse_line(line: str, *, where: str) -> ManifestRecord:
    try:
        payload = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(payload, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(payload).__name__}")
    _check_payload(payload, where=where)
    payload["spacing"] = [float(v) for v in payload["spacing"]]
    return ManifestRecord(**payload)


def read_manifest(path: str | os.PathLike[str]) -> list[ManifestRecord]:
    """Read a ``*.jsonl`` manifest; blank lines are ignored.

    Raises:
        ManifestError: the file is missing or unreadable, or a line is not valid JSON, lacks
            or has unknown fields, has a value of the wrong type, or repeats a case id. The
            message names the file and line number.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: manifest not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read manifest: {exc}") from exc
    records: list[ManifestRecord] = []
    line_of_case: dict[str, int] = {}
    # split("\n"), not splitlines(): JSON strings may hold U+2028, which splitlines breaks on.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        record = _parse_line(line, where=where)
        if record.case_id in line_of_case:
            first = line_of_case[record.case_id]
            raise ManifestError(f"{where}: case_id '{record.case_id}' already used on line {first}")
        line_of_case[record.case_id] = number
        records.append(record)
    return records


def write_manifest(records: Iterable[ManifestRecord], path: str | os.PathLike[str]) -> Path:
    """Write ``records`` atomically, sorted by case id, one compact JSON object per line.

    Raises:
        ManifestError: a record is invalid or two records share a case id.
    """
    path = Path(path)
    ordered = sorted(records, key=lambda record: record.case_id)
    for record in ordered:
        _check_payload(asdict(record), where=f"{path}: case '{record.case_id}'")
    counts = Counter(record.case_id for record in ordered)
    repeated = sorted(case_id for case_id, count in counts.items() if count > 1)
    if repeated:
        raise ManifestError(f"{path}: duplicate case_id(s) {', '.join(repeated)}")
    write_text_atomic(path, "".join(record.to_json() + "\n" for record in ordered))
    return path


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file's bytes, read in chunks."""
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def volume_sha256(path: str | os.PathLike[str]) -> str:
    """The checksum a manifest records for a scan or label map file.

    The file's ``sha256_file``, except for a detached header (``.nhdr``, ``.mhd``) that names
    data files: then SHA-256 over the 32-byte digests of the header and of each data file, in
    the header's order.

    Raises:
        OSError: the file or one of its data files cannot be read (e.g. it is missing).
    """
    parts = data_files(path)
    if not parts:
        return sha256_file(path)
    digest = hashlib.sha256()
    for part in (Path(path), *parts):
        digest.update(bytes.fromhex(sha256_file(part)))
    return digest.hexdigest()


def _base_folder(manifest_path: str | os.PathLike[str], data_root: Path | None) -> Path:
    base = Path(data_root) if data_root is not None else Path(manifest_path).parent
    return Path(os.path.abspath(base))


def resolve(
    record: ManifestRecord,
    manifest_path: str | os.PathLike[str],
    data_root: Path | None = None,
) -> tuple[Path, Path | None]:
    """Absolute image and label paths of ``record`` (see the path convention above)."""
    base = _base_folder(manifest_path, data_root)
    image = Path(os.path.normpath(base / record.image))
    label = Path(os.path.normpath(base / record.label)) if record.label is not None else None
    return image, label


def manifest_relative_path(
    path: str | os.PathLike[str],
    *,
    manifest_path: str | os.PathLike[str],
    data_root: Path | None = None,
) -> str:
    """The POSIX path to store in a manifest for ``path``; the inverse of ``resolve``.

    Raises:
        ManifestError: ``data_root`` is given and ``path`` is not inside it.
    """
    base = _base_folder(manifest_path, data_root)
    relative = Path(os.path.relpath(os.path.abspath(path), base))
    if data_root is not None and relative.parts[:1] == ("..",):
        raise ManifestError(f"{path}: not inside the data root {data_root}")
    return relative.as_posix()


def split_counts(n_cases: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Numbers of train, val and test cases: ``n_cases * fractions`` rounded to sum to n.

    Uses largest remainders: each split gets the floor of its share, and the cases left over
    go to the splits with the largest fractional parts (ties to the earlier split).

    Raises:
        SplitFractionsError: ``fractions`` is not three non-negative numbers summing to 1.
    """
    if len(fractions) != 3 or not all(_is_number(f) and f >= 0 for f in fractions):
        raise SplitFractionsError(
            f"fractions must be three non-negative numbers, got {fractions!r}"
        )
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise SplitFractionsError(
            f"fractions must sum to 1, got {fractions!r} (sum {sum(fractions)})"
        )
    # Rounding to 9 decimals keeps 10 * 0.7 = 7.000000000000001 from becoming a remainder.
    shares = [round(n_cases * f, 9) for f in fractions]
    counts = [math.floor(share) for share in shares]
    by_remainder = sorted(range(3), key=lambda i: (counts[i] - shares[i], i))
    for i in by_remainder[: n_cases - sum(counts)]:
        counts[i] += 1
    return counts[0], counts[1], counts[2]


def assign_splits(
    case_ids: Iterable[str],
    *,
    seed: int,
    fractions: Sequence[float] = (0.8, 0.2, 0.0),
) -> dict[str, str]:
    """Assign each case to train/val/test; the same ids and seed always give the same result.

    Cases are ordered by SHA-256 of ``"<seed>:<case_id>"``, which depends neither on the input
    order nor on library versions, and the first ``split_counts`` cases go to train, the next
    to val, the rest to test.

    Raises:
        ManifestError: case ids repeat.
        SplitFractionsError: ``fractions`` are invalid.
    """
    ids = list(case_ids)
    if len(set(ids)) != len(ids):
        raise ManifestError("case ids must be unique")
    counts = split_counts(len(ids), fractions)
    order = sorted(ids, key=lambda case_id: hashlib.sha256(f"{seed}:{case_id}".encode()).digest())
    splits: dict[str, str] = {}
    start = 0
    for split, count in zip(Split, counts, strict=True):
        splits.update((case_id, split.value) for case_id in order[start : start + count])
        start += count
    return dict(sorted(splits.items()))


def with_splits(
    records: list[ManifestRecord], *, seed: int, val_fraction: float, test_fraction: float = 0.0
) -> list[ManifestRecord]:
    """``records`` with reproducible train/val/test splits of the labelled cases
    (``assign_splits``); unlabelled cases go to test.

    Raises:
        SplitFractionsError: the fractions are not a valid split.
    """
    fractions = (1.0 - val_fraction - test_fraction, val_fraction, test_fraction)
    split_counts(0, fractions)  # validates
    labelled = [record.case_id for record in records if record.label is not None]
    splits = assign_splits(labelled, seed=seed, fractions=fractions)
    return [
        replace(record, split=splits.get(record.case_id, Split.TEST.value)) for record in records
    ]


IGNORE_LABEL_NAME = "ignore"
"""The label name (any case) that marks unannotated voxels (:func:`ignore_label_value`)."""


def label_names_path(manifest_path: str | os.PathLike[str]) -> Path:
    """The label-name sidecar of a manifest: ``cases.jsonl`` -> ``cases.labels.json``."""
    return Path(manifest_path).with_suffix(".labels.json")


def write_label_names(
    names: Mapping[int, str],
    manifest_path: str | os.PathLike[str],
    *,
    regions: RegionSet | None = None,
) -> Path:
    """Write ``{"labels": {"0": "background", ...}}`` beside the manifest (with the regions, if
    any: ``"regions"`` and ``"regions_class_order"``); return its path."""
    path = label_names_path(manifest_path)
    payload: dict[str, Any] = {"labels": {str(value): names[value] for value in sorted(names)}}
    if regions is not None:
        payload["regions"] = {region.name: region.labels for region in regions.regions}
        payload["regions_class_order"] = regions.regions_class_order
    write_text_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    return path


def read_label_names(manifest_path: str | os.PathLike[str]) -> dict[int, str]:
    """Label value -> name from the manifest's sidecar.

    Raises:
        ManifestError: the sidecar is missing or malformed.
        IgnoreLabelError: its ignore label is not the highest value (see
            :func:`ignore_label_value`).
    """
    path = label_names_path(manifest_path)
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))["labels"]
        names = {int(value): str(name) for value, name in labels.items()}
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: label names not found beside the manifest") from exc
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ManifestError(f'{path}: expected {{"labels": {{"<value>": "<name>"}}}}') from exc
    ignore_label_value(names, where=path)
    return names


def load_label_names(path: str | os.PathLike[str]) -> dict[int, str]:
    """Label value -> name from a JSON file: a manifest sidecar or a dataset.json (``"labels"``),
    or a bare mapping; ``{"1": "liver"}`` and nnU-Net v2's ``{"liver": 1}`` are both understood.
    A dataset.json declaring regions names each painted value after its region.

    Raises:
        ManifestError: unreadable file or not such a mapping.
        IgnoreLabelError: its ignore label is not the highest value.
        RegionsError: inconsistent region declarations.
    """
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        mapping = payload.get("labels", payload)
        regions = regions_in(payload, where=path)
        if regions is not None and is_region_declaration(mapping):
            mapping = regions.label_names() | {
                value: name for name, value in mapping.items() if _is_ignore_name(name)
            }
        elif all(isinstance(v, int) for v in mapping.values()):  # nnU-Net v2: {"name": value}
            mapping = {v: k for k, v in mapping.items()}
        names = {int(value): str(name) for value, name in mapping.items()}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ManifestError(f'{path}: expected label names {{"<value>": "<name>"}}: {exc}') from exc
    ignore_label_value(names, where=path)
    return names


def regions_in(payload: Mapping[str, Any], *, where: object) -> RegionSet | None:
    """The regions a label-names sidecar (``"regions"``) or a dataset.json (labels given as
    lists) declares, or None.

    Raises:
        RegionsError: inconsistent declarations (see :func:`medseg.regions.parse_regions`).
    """
    order = payload.get("regions_class_order")
    if isinstance(payload.get("regions"), Mapping):
        return parse_regions(payload["regions"], order, where=where)
    labels = payload.get("labels")
    if isinstance(labels, Mapping) and is_region_declaration(labels):
        return parse_regions(labels, order, where=where)
    if order is not None:
        raise RegionsError(f"{where}: 'regions_class_order' is given but no label is a region")
    return None


def load_regions(path: str | os.PathLike[str]) -> RegionSet | None:
    """The regions a label-names file (sidecar or dataset.json) declares, or None.

    Raises:
        ManifestError: unreadable file.
        RegionsError: inconsistent region declarations.
    """
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: cannot read label names: {exc}") from exc
    return regions_in(payload, where=path) if isinstance(payload, dict) else None


def read_regions(manifest_path: str | os.PathLike[str]) -> RegionSet | None:
    """The regions declared in a manifest's label-names sidecar, or None (none or no sidecar).

    Raises:
        ManifestError: the sidecar is unreadable.
        RegionsError: its region declarations are inconsistent.
    """
    path = label_names_path(manifest_path)
    return load_regions(path) if path.exists() else None


def ignore_label_value(names: Mapping[int, str], *, where: object) -> int | None:
    """The value of the ignore label in ``names``, or None when no label is named ``ignore``.

    As in nnU-Net v2, a label named :data:`IGNORE_LABEL_NAME` (any case) marks voxels that are
    not annotated: they count in neither the training loss nor the metrics, and no network
    predicts them. It must be the highest label value, so the real labels stay ``0..K-1``.

    Raises:
        IgnoreLabelError: several labels are named ``ignore``, or the ignore label is 0 or not
            the highest value; the message starts with ``where`` (the file of the names).
    """
    ignored = sorted(value for value, name in names.items() if _is_ignore_name(name))
    if not ignored:
        return None
    if len(ignored) > 1:
        raise IgnoreLabelError(
            f"{where}: {len(ignored)} labels are named {IGNORE_LABEL_NAME!r} "
            f"(values {ignored}); name one only"
        )
    value, highest = ignored[0], max(names)
    if value != highest or value == 0:
        raise IgnoreLabelError(
            f"{where}: the label named {IGNORE_LABEL_NAME!r} has value {value}, but the ignore "
            f"label must be the highest label value and not 0 (highest: {highest}); renumber it"
        )
    return value


def without_ignore_label(names: Mapping[int, str]) -> dict[int, str]:
    """``names`` without the ignore label: the labels a network predicts and reports name."""
    return {value: name for value, name in names.items() if not _is_ignore_name(name)}


def _is_ignore_name(name: str) -> bool:
    return name.strip().lower() == IGNORE_LABEL_NAME


def manifest_spacing(volume: Volume) -> list[float]:
    """Voxel spacing as stored in a manifest: mm along i, j, k, rounded to 1e-6 mm."""
    return [round(s, SPACING_DECIMALS) for s in volume.spacing_mm]


def label_values(array: np.ndarray) -> list[int]:
    """Sorted distinct values of a label map; float maps are fine if every value is whole.

    Raises:
        NonIntegralLabelError: a value is fractional, NaN or infinite.
    """
    values = np.unique(array)
    if values.dtype.kind == "f":
        bad = values[~np.isfinite(values) | (values != np.round(values))]
        if bad.size:
            raise NonIntegralLabelError(
                f"label has {bad.size} non-integral value(s), e.g. {bad[0]:g}"
            )
    return [int(v) for v in values]


def grid_mismatch(image: Volume, label: Volume) -> str | None:
    """Why ``label`` is not on ``image``'s voxel grid, or None when it is."""
    if image.same_grid(label):
        return None
    if image.shape[:3] != label.shape[:3]:
        return f"label shape {label.shape[:3]} differs from image shape {image.shape[:3]}"
    worst = float(np.max(np.abs(image.affine_ras - label.affine_ras)))
    return f"label affine differs from the image affine by up to {worst:.4g} mm"


class ProblemKind(StrEnum):
    """What is wrong with a case, in a manifest check or an import."""

    MISSING_FILE = "missing_file"
    UNREADABLE = "unreadable"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    SHAPE_MISMATCH = "shape_mismatch"
    SPACING_MISMATCH = "spacing_mismatch"
    GRID_MISMATCH = "grid_mismatch"
    NON_INTEGRAL_LABEL = "non_integral_label"
    UNKNOWN_LABEL_VALUE = "unknown_label_value"
    UNSUPPORTED = "unsupported"
    DUPLICATE_CASE = "duplicate_case"


@dataclass(frozen=True)
class CaseProblem:
    """One problem found with one case; ``detail`` names the file and what is wrong."""

    case_id: str
    kind: ProblemKind
    detail: str
