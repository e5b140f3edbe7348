"""Import a folder of images and labels into a data manifest (see ``medseg.manifest``).

Files of any registered volume format (``medseg.io.formats``: NIfTI, NRRD, MetaImage) are
taken; an image and its label pair by stem whatever their formats.

Layouts, detected from the folder:

* ``msd`` and ``nnunet_v2``: ``imagesTr/``, ``labelsTr/`` and ``dataset.json``, optionally
  ``imagesTs/``. The dialect is read from dataset.json (nnU-Net v2 has ``channel_names``,
  ``file_ending`` or labels as ``{"background": 0}``; MSD has labels as ``{"0": "background"}``);
  both ``labels`` forms are accepted either way. nnU-Net image names carry a channel suffix
  (``case_0000``) which is stripped to pair them with labels.
* ``flat``: ``images/`` and ``labels/`` paired by file stem; a ``dataset.json`` beside them is
  used for label names and modality when present.

Decisions:

* Orphans (an image without label in a training folder, a label without image) are listed in
  ``ImportReport.orphans`` and left out of the manifest. A missing label is a data error, not
  a test case, so it must not land in any split. The only records without a label are images
  from ``imagesTs/``, which always get split ``"test"``.
* A pair is rejected (listed in ``ImportReport.rejected``, left out) when a file is unreadable,
  the label is not 3D or not on the image's grid, holds non-integral values, or holds values
  dataset.json does not name. Nothing about a single case stops the import.
* Label names are dataset-wide: ``ImportReport.label_names`` and the sidecar
  ``label_names_path(manifest_path)``. Each record's ``extra["label_values"]`` lists the values
  present in that case. Without dataset.json, 0 is ``"background"`` and every other value
  found is ``"label_<n>"``. A label named ``ignore`` (nnU-Net v2's ignore label, for sparse or
  partial annotations) is kept in the sidecar and must be the highest value.
* Regions (nnU-Net v2, ``medseg.regions``): labels given as lists of values plus
  ``regions_class_order`` declare overlapping regions; the sidecar keeps them, names each
  painted value after its region, and a label file may hold only the painted values.
* Channels: dataset.json's ``channel_names`` (nnU-Net v2) or ``modality`` (MSD) with more than
  one entry declares a multi-channel dataset (e.g. ``{"0": "T1", "1": "T2"}``). A case is
  then either one file per channel (``case_0000``, ``case_0001``...) or one 4D file with the
  channels on its 4th axis (MSD Task01). Channel files are stacked (``medseg.io.channels``)
  into one 4D NIfTI in closest-RAS order, ``channel_folder(manifest_path)/<case>.nii.gz``,
  which the record's ``image`` names; its ``shape`` is ``[X, Y, Z, C]`` and
  ``extra["channel_names"]`` the declared names in channel order. A case is rejected when a
  channel file is missing or extra, when a channel is not on channel 0's grid (the message
  names the file and what differs), or when a 4D file has another number of channels.
* Modality: the ``modality`` argument, else dataset.json's channel "0" (``channel_names`` or
  ``modality``) as a DICOM code (``"MRI"``, ``"T1"``... -> ``"MR"``), else ``"unknown"``.
* Splits: labelled cases get train/val/test by ``assign_splits`` with fractions
  ``(1 - val - test, val, test)``.
* ``source`` is ``hash_identifier("<dataset folder name>/<image path inside it>")``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.errors import (
    ChannelsError,
    DatasetLayoutError,
    InputFileError,
    NonIntegralLabelError,
)
from medseg.io.channels import CHANNEL_SUFFIX, channel_number, stack_channels
from medseg.io.formats import is_volume_path, read_volume, volume_stem, write_volume
from medseg.manifest import (
    IGNORE_LABEL_NAME,
    CaseProblem,
    ManifestRecord,
    ProblemKind,
    Split,
    grid_mismatch,
    ignore_label_value,
    label_values,
    manifest_relative_path,
    manifest_spacing,
    regions_in,
    volume_sha256,
    with_splits,
    write_label_names,
    write_manifest,
)
from medseg.phi import hash_identifier
from medseg.regions import RegionSet
from medseg.volume import Volume

logger = logging.getLogger(__name__)

_MR_NAMES = {"MR", "MRI", "T1", "T1W", "T1GD", "T1C", "T1CE", "T2", "T2W", "FLAIR", "ADC", "DWI"}
_MODALITY_CODES = {"CT": "CT", "PET": "PT", "PT": "PT", "US": "US", "XRAY": "DX", "DX": "DX"}
# nnU-Net v2 channel names that choose a normalisation scheme rather than name a modality.
_NORMALISATION_NAMES = {"ZSCORE", "NONORM", "RESCALETO01", "RGBTO01"}


@dataclass(frozen=True)
class Orphan:
    """An image without label or a label without image; ``path`` is inside the dataset."""

    case_id: str
    path: str
    reason: str


@dataclass
class ImportReport:
    """What ``import_dataset`` wrote and what it left out, and why."""

    layout: str
    manifest_path: Path
    records: list[ManifestRecord]
    orphans: list[Orphan]
    rejected: list[CaseProblem]
    label_names: dict[int, str]
    modality: str
    channel_names: list[str] | None = None  # a multi-channel dataset's, in channel order
    regions: RegionSet | None = None  # a region-based dataset's (see medseg.regions)

    @property
    def split_counts(self) -> dict[str, int]:
        """Number of records per split, e.g. ``{"train": 171, "val": 43}``."""
        counts = Counter(record.split for record in self.records)
        return {split.value: counts[split] for split in Split if counts[split]}


@dataclass(frozen=True)
class _Case:
    case_id: str
    images: tuple[Path, ...]
    label: Path | None


@dataclass
class _Layout:
    name: str
    cases: list[_Case]
    orphans: list[Orphan]
    rejected: list[CaseProblem]
    metadata: dict[str, Any]


@dataclass(frozen=True)
class _ImportSettings:
    dataset_dir: Path
    manifest_path: Path
    data_root: Path | None
    modality: str
    named_labels: dict[int, str] | None
    channel_names: list[str] | None


class _Rejected(Exception):
    def __init__(self, kind: ProblemKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def normalise_modality(name: str) -> str:
    """DICOM-style modality code for a dataset.json channel name (``"MRI"`` -> ``"MR"``)."""
    key = re.sub(r"[\s_\-.]", "", name).upper()
    if key in _MR_NAMES:
        return "MR"
    if key in _NORMALISATION_NAMES or not key:
        return "unknown"
    return _MODALITY_CODES.get(key, name.strip())


def _read_dataset_json(path: Path) -> dict[str, Any]:
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetLayoutError(f"{path}: cannot read dataset.json: {exc}") from exc
    if not isinstance(metadata, dict):
        raise DatasetLayoutError(f"{path}: dataset.json must hold a JSON object")
    return metadata


def _label_names_from_json(metadata: dict[str, Any], path: Path) -> dict[int, str] | None:
    """Label value -> name from MSD (``{"0": "bg"}``) or nnU-Net v2 (``{"bg": 0}``) labels; with
    regions (labels given as lists), the values the regions paint, named after them."""
    labels = metadata.get("labels")
    if labels is None:
        return None
    if not isinstance(labels, dict) or not labels:
        raise DatasetLayoutError(f"{path}: 'labels' must be a non-empty object")
    regions = regions_in(metadata, where=path)
    if regions is not None:
        ignored = {v: k for k, v in labels.items() if k.strip().lower() == IGNORE_LABEL_NAME}
        painted = regions.label_names() | ignored
        ignore_label_value(painted, where=path)
        return painted
    names: dict[int, str] = {}
    for key, value in labels.items():
        if isinstance(value, str) and re.fullmatch(r"\d+", key):
            number, name = int(key), value
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            number, name = value, key
        else:
            raise DatasetLayoutError(
                f"{path}: label entry {key!r}: {value!r} is neither MSD style "
                '("<value>": "<name>") nor nnU-Net v2 style ("<name>": <value>)'
            )
        if number in names:
            raise DatasetLayoutError(f"{path}: label value {number} is named twice")
        names[number] = name
    ignore_label_value(names, where=path)
    return names


def _modality_from_json(metadata: dict[str, Any]) -> str:
    for key in ("channel_names", "modality"):
        channels = metadata.get(key)
        if isinstance(channels, dict) and isinstance(channels.get("0"), str):
            return normalise_modality(channels["0"])
    return "unknown"


def _channel_names_from_json(metadata: dict[str, Any], path: Path) -> list[str] | None:
    """The channel names of a multi-channel dataset (``channel_names`` or ``modality`` with
    entries "0", "1"...), in channel order; None for a single-channel dataset."""
    for key in ("channel_names", "modality"):
        channels = metadata.get(key)
        if not isinstance(channels, dict) or len(channels) < 2:
            continue
        if sorted(channels) != [str(n) for n in range(len(channels))] or not all(
            isinstance(name, str) and name for name in channels.values()
        ):
            raise DatasetLayoutError(
                f'{path}: \'{key}\' must map "0", "1"... to channel names, got {channels!r}'
            )
        return [channels[str(n)] for n in range(len(channels))]
    return None


def channel_folder(manifest_path: Path) -> Path:
    """Where the import writes stacked multi-channel cases (``cases.jsonl`` ->
    ``cases.channels/``)."""
    return Path(manifest_path).with_suffix(".channels")


def _is_nnunet_v2(metadata: dict[str, Any]) -> bool:
    labels = metadata.get("labels")
    int_labels = isinstance(labels, dict) and any(isinstance(v, int) for v in labels.values())
    return "channel_names" in metadata or "file_ending" in metadata or int_labels


def _volume_files(folder: Path) -> dict[str, Path]:
    """File stem -> volume file (NIfTI, NRRD...) in ``folder``; hidden files (``._x.nii.gz``)
    are skipped."""
    files: dict[str, Path] = {}
    if not folder.is_dir():
        return files
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or not is_volume_path(path):
            continue
        stem = volume_stem(path)
        if stem in files:
            raise DatasetLayoutError(f"{folder}: both {files[stem].name} and {path.name} exist")
        files[stem] = path
    return files


def _uses_channel_suffix(
    images: dict[str, Path], label_stems: set[str], metadata: dict[str, Any]
) -> bool:
    """True when image stems end in nnU-Net's ``_0000`` channel number."""
    if not images or not all(CHANNEL_SUFFIX.match(stem) for stem in images):
        return False
    if "channel_names" in metadata:
        return True
    # An MSD-style dataset.json says nothing about channels: strip only if that pairs more.
    stripped = {CHANNEL_SUFFIX.sub(r"\g<case>", stem) for stem in images}
    return len(stripped & label_stems) > len(set(images) & label_stems)


def _group_channels(images: dict[str, Path], *, strip: bool) -> dict[str, tuple[Path, ...]]:
    """Case id -> its image files (one per channel, in channel order)."""
    grouped: dict[str, list[Path]] = {}
    for stem, path in sorted(images.items()):
        match = CHANNEL_SUFFIX.match(stem) if strip else None
        grouped.setdefault(match["case"] if match else stem, []).append(path)
    return {case_id: tuple(paths) for case_id, paths in grouped.items()}


def _collect_cases(
    dataset_dir: Path, *, folders: tuple[str, str, str | None], metadata: dict[str, Any]
) -> tuple[list[_Case], list[Orphan], list[CaseProblem]]:
    """Pair images with labels; ``folders`` are (training images, labels, test images)."""
    image_folder, label_folder, test_folder = folders
    images = _volume_files(dataset_dir / image_folder)
    labels = _volume_files(dataset_dir / label_folder)
    strip = _uses_channel_suffix(images, set(labels), metadata)
    training = _group_channels(images, strip=strip)
    cases, orphans, rejected = [], [], []
    for case_id, files in training.items():
        if case_id in labels:
            cases.append(_Case(case_id, files, labels[case_id]))
        else:
            reason = f"image has no label named {case_id} in {label_folder}/"
            orphans += [Orphan(case_id, _inside(p, dataset_dir), reason) for p in files]
    for case_id in sorted(set(labels) - set(training)):
        reason = f"label has no image named {case_id} in {image_folder}/"
        orphans.append(Orphan(case_id, _inside(labels[case_id], dataset_dir), reason))
    if test_folder is not None:
        test_images = _volume_files(dataset_dir / test_folder)
        strip_test = strip and all(CHANNEL_SUFFIX.match(stem) for stem in test_images)
        for case_id, files in _group_channels(test_images, strip=strip_test).items():
            if case_id in training or case_id in labels:
                detail = (
                    f"{test_folder}/ and {image_folder}/ or {label_folder}/ share case {case_id}"
                )
                rejected.append(CaseProblem(case_id, ProblemKind.DUPLICATE_CASE, detail))
            else:
                cases.append(_Case(case_id, files, None))
    return cases, orphans, rejected


def _inside(path: Path, dataset_dir: Path) -> str:
    return path.relative_to(dataset_dir).as_posix()


def _detect_layout(dataset_dir: Path) -> _Layout:
    json_path = dataset_dir / "dataset.json"
    if (dataset_dir / "imagesTr").is_dir():
        if not (dataset_dir / "labelsTr").is_dir() or not json_path.is_file():
            raise DatasetLayoutError(
                f"{dataset_dir}: has imagesTr/ but an MSD/nnU-Net dataset also needs "
                "labelsTr/ and dataset.json"
            )
        metadata = _read_dataset_json(json_path)
        name = "nnunet_v2" if _is_nnunet_v2(metadata) else "msd"
        folders: tuple[str, str, str | None] = ("imagesTr", "labelsTr", "imagesTs")
    elif (dataset_dir / "images").is_dir() and (dataset_dir / "labels").is_dir():
        metadata = _read_dataset_json(json_path) if json_path.is_file() else {}
        name, folders = "flat", ("images", "labels", None)
    else:
        raise DatasetLayoutError(
            f"{dataset_dir}: unrecognised layout; expected imagesTr/ + labelsTr/ + dataset.json "
            "(MSD, nnU-Net) or images/ + labels/"
        )
    cases, orphans, rejected = _collect_cases(dataset_dir, folders=folders, metadata=metadata)
    return _Layout(name, cases=cases, orphans=orphans, rejected=rejected, metadata=metadata)


def _checked_label_values(
    image: Volume, label: Volume, *, label_name: str, named: dict[int, str] | None
) -> list[int]:
    """Values present in ``label`` after checking it fits ``image``; raises ``_Rejected``."""
    if label.array.ndim != 3:
        raise _Rejected(ProblemKind.UNSUPPORTED, f"{label_name}: label is not 3D: {label.shape}")
    mismatch = grid_mismatch(image, label)
    if mismatch:
        raise _Rejected(ProblemKind.GRID_MISMATCH, f"{label_name}: {mismatch}")
    try:
        values = label_values(label.array)
    except NonIntegralLabelError as exc:
        raise _Rejected(ProblemKind.NON_INTEGRAL_LABEL, f"{label_name}: {exc}") from exc
    unknown = sorted(set(values) - set(named)) if named is not None else []
    if unknown:
        detail = f"{label_name}: label values {unknown} are not named in dataset.json"
        raise _Rejected(ProblemKind.UNKNOWN_LABEL_VALUE, detail)
    return values


def _read(path: Path, dataset_dir: Path) -> Volume:
    try:
        return read_volume(path)
    except InputFileError as exc:
        detail = f"{_inside(path, dataset_dir)}: {exc.problem}"
        raise _Rejected(ProblemKind.UNREADABLE, detail) from exc


def _checked_channel_files(case: _Case, settings: _ImportSettings) -> None:
    """Raise ``_Rejected`` unless a case's files are one per declared channel (or one file)."""
    names = settings.channel_names or [settings.modality]
    if len(case.images) == 1 and (channel_number(case.images[0]) is None or len(names) == 1):
        return  # one file: a 3D scan or a 4D file, checked once read
    numbers = [channel_number(path) for path in case.images]
    missing = [n for n in range(len(names)) if n not in numbers]
    if missing:
        absent = ", ".join(f"{case.case_id}_{n:04d} ({names[n]})" for n in missing)
        raise _Rejected(ProblemKind.MISSING_FILE, f"channel file(s) {absent} missing")
    extra = [
        _inside(path, settings.dataset_dir)
        for path, number in zip(case.images, numbers, strict=True)
        if number is None or number >= len(names)
    ]
    if extra:
        declared = (
            f"{len(names)} channels ({', '.join(names)})"
            if settings.channel_names
            else "one channel (channel_names declares more)"
        )
        raise _Rejected(
            ProblemKind.UNSUPPORTED, f"{', '.join(extra)}: dataset.json declares {declared}"
        )


def _case_image(case: _Case, settings: _ImportSettings) -> tuple[Volume, Path]:
    """A case's image (channels stacked) and the file the manifest names; raises ``_Rejected``."""
    dataset_dir = settings.dataset_dir
    _checked_channel_files(case, settings)
    if len(case.images) == 1:
        image = _read(case.images[0], dataset_dir)
        channels = image.shape[3] if image.array.ndim == 4 else 1
        declared = len(settings.channel_names or [settings.modality])
        if channels != declared:
            detail = (
                f"{_inside(case.images[0], dataset_dir)}: has {channels} channel(s), "
                f"dataset.json declares {declared}"
            )
            raise _Rejected(ProblemKind.SHAPE_MISMATCH, detail)
        return image, case.images[0]
    volumes = [(_inside(path, dataset_dir), _read(path, dataset_dir)) for path in case.images]
    try:
        image = stack_channels(volumes)
    except ChannelsError as exc:
        raise _Rejected(ProblemKind.GRID_MISMATCH, str(exc)) from exc
    stacked = write_volume(image, channel_folder(settings.manifest_path) / f"{case.case_id}.nii.gz")
    return image, stacked


def _import_case(case: _Case, settings: _ImportSettings) -> ManifestRecord:
    """Check one case and build its record (split not yet set); raises ``_Rejected``."""
    dataset_dir = settings.dataset_dir
    image, image_path = _case_image(case, settings)
    label_file, label_sha256, extra = None, None, {}
    if case.label is not None:
        label = _read(case.label, dataset_dir)
        extra["label_values"] = _checked_label_values(
            image, label, label_name=_inside(case.label, dataset_dir), named=settings.named_labels
        )
        label_file, label_sha256 = _stored_path(case.label, settings), volume_sha256(case.label)
    return ManifestRecord(
        case_id=case.case_id,
        image=_stored_path(image_path, settings),
        label=label_file,
        sha256=volume_sha256(image_path),
        label_sha256=label_sha256,
        modality=settings.modality,
        shape=list(image.shape),
        spacing=manifest_spacing(image),
        source=hash_identifier(f"{dataset_dir.name}/{_inside(case.images[0], dataset_dir)}"),
        split=None,
        extra=extra | ({"channel_names": settings.channel_names} if settings.channel_names else {}),
    )


def _stored_path(path: Path, settings: _ImportSettings) -> str:
    return manifest_relative_path(
        path, manifest_path=settings.manifest_path, data_root=settings.data_root
    )


def _derived_label_names(records: list[ManifestRecord]) -> dict[int, str]:
    values = {value for record in records for value in record.extra.get("label_values", [])}
    return {value: "background" if value == 0 else f"label_{value}" for value in sorted(values)}


def import_dataset(
    dataset_dir: Path,
    *,
    manifest_path: Path,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    data_root: Path | None = None,
    modality: str | None = None,
) -> ImportReport:
    """Pair, check and checksum a dataset's images and labels; write manifest and label names.

    Args:
        dataset_dir: folder in one of the layouts described in the module docstring.
        manifest_path: the ``*.jsonl`` to write; label names go to its ``.labels.json`` sidecar.
        seed: seed of the train/val/test assignment.
        val_fraction: share of labelled cases that go to "val".
        test_fraction: share of labelled cases that go to "test" (``imagesTs/`` always does).
        data_root: store paths relative to this folder instead of the manifest's folder.
        modality: modality of every case, overriding dataset.json.

    Returns:
        The records written, orphans and rejected cases with reasons, and label names.

    Raises:
        DatasetLayoutError: the folder has no recognised layout or a bad dataset.json.
        ManifestError: ``data_root`` is given and the dataset is not inside it.
        SplitFractionsError: the fractions are negative or sum to more than 1.
    """
    # Absolute, so that ``dataset_dir.name`` (hashed into ``source``) is never "" or "..".
    dataset_dir, manifest_path = Path(os.path.abspath(dataset_dir)), Path(manifest_path)
    if not dataset_dir.is_dir():
        raise DatasetLayoutError(f"{dataset_dir}: not a folder")
    with_splits([], seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    manifest_relative_path(dataset_dir, manifest_path=manifest_path, data_root=data_root)
    layout = _detect_layout(dataset_dir)
    named = _label_names_from_json(layout.metadata, dataset_dir / "dataset.json")
    regions = regions_in(layout.metadata, where=dataset_dir / "dataset.json")
    channel_names = _channel_names_from_json(layout.metadata, dataset_dir / "dataset.json")
    if channel_names and any(len(case.images) > 1 for case in layout.cases):
        # Stacked cases are written there: refuse now if the manifest could not name them.
        manifest_relative_path(
            channel_folder(manifest_path), manifest_path=manifest_path, data_root=data_root
        )
    settings = _ImportSettings(
        dataset_dir=dataset_dir,
        manifest_path=manifest_path,
        data_root=data_root,
        modality=modality or _modality_from_json(layout.metadata),
        named_labels=named,
        channel_names=channel_names,
    )
    records: list[ManifestRecord] = []
    rejected = list(layout.rejected)
    for case in layout.cases:
        try:
            records.append(_import_case(case, settings))
        except _Rejected as exc:
            rejected.append(CaseProblem(case.case_id, exc.kind, exc.detail))
    records = with_splits(
        records, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction
    )
    label_names = named if named is not None else _derived_label_names(records)
    write_manifest(records, manifest_path)
    write_label_names(label_names, manifest_path, regions=regions)
    logger.info(
        "imported %d case(s) from %s (%s layout); %d orphan(s), %d rejected",
        len(records),
        dataset_dir.name,
        layout.name,
        len(layout.orphans),
        len(rejected),
    )
    if not records:
        logger.warning("%s: no case was imported; the manifest is empty", dataset_dir.name)
    return ImportReport(
        layout=layout.name,
        manifest_path=manifest_path,
        records=sorted(records, key=lambda record: record.case_id),
        orphans=sorted(layout.orphans, key=lambda orphan: (orphan.case_id, orphan.path)),
        rejected=sorted(rejected, key=lambda problem: problem.case_id),
        label_names=label_names,
        modality=settings.modality,
        channel_names=channel_names,
        regions=regions,
    )
