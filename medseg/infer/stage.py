"""The predict stage: every scan under an input path through a packaged model.

Per scan, named by its case id (``--case-ids hash``, the default: ``ct_<16 hex>``; ``folder``:
the file or folder name, e.g. ``hippocampus_007``): the label map ``<case_id>.nii.gz`` in the
scan's geometry (``.nrrd``, ``.mha``... with another ``output_format``: any format registered
in ``medseg.io.formats``), ``<case_id>.volumes.json`` (per-structure volume in mL and mm^3, mean
intensity: TotalSegmentator's statistics fields; the intensities' standard deviation, median
and 5th/95th percentiles) and, for DICOM inputs, ``<case_id>_seg.dcm``
(a DICOM SEG referencing the source series). A scan that fails is reported with the reason in
``predict_report.json`` and the others go on.

A scan's files are written into ``OUT/.tmp-predict/<case_id>/`` and moved into ``OUT`` only
once all of them are written, the label map last: a label map in ``OUT`` means its case is
complete, and a case that fails leaves nothing in ``OUT`` (outputs of an earlier run of it are
removed). One predict per ``OUT`` at a time; leftovers of a killed run are removed at start.

``predict_task`` (one scan into one folder) and ``scan_predictors`` (the networks or exported
backends to run, one per member of the model) are public: ``medseg batch`` (``medseg.batch``)
runs the same per-scan work in worker processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medseg import __version__, shutdown
from medseg.errors import ConfigError, MedsegError
from medseg.evaluate.volumes import intensity_spread, structure_statistics
from medseg.infer.auto import resolve_options
from medseg.infer.outputs import (
    MESHES_SUFFIX,
    RTSTRUCT_SUFFIX,
    UNCERTAINTY_SUFFIX,
    ScanOutputs,
    output_names,
    write_meshes,
    write_radiomics,
)
from medseg.infer.predictor import (
    PackagedModel,
    PredictionOptions,
    model_cache_folder,
    predict_scan,
)
from medseg.ingest.case_ids import CaseIdScheme
from medseg.ingest.discovery import ScanTask, discover_scans
from medseg.io.atomic import TEMPORARY_PREFIX, write_json_atomic
from medseg.io.formats import format_named, output_name, registered_formats, write_volume
from medseg.io.nifti import write_nifti
from medseg.io.probabilities import PROBABILITIES_SUFFIX, ProbabilityWriter
from medseg.progress import ProgressCallback
from medseg.volume import Volume

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

STAGING_FOLDER = f"{TEMPORARY_PREFIX}predict"  # OUT/.tmp-predict/<case_id>/: being written


@dataclass
class ScanOutcome:
    """What happened to one input scan (``source`` only with ``--case-ids folder``)."""

    case_id: str
    source: str | None
    ok: bool
    reason: str = ""
    seconds: float = 0.0
    error_type: str = ""  # class name of the error of a failed scan
    outputs: list[str] = field(default_factory=list)
    volumes_ml: dict[str, float] = field(default_factory=dict)
    # each structure's confidence (medseg.infer.confidence; None: not found; empty: none made)
    confidence: dict[str, float | None] = field(default_factory=dict)
    corrections: list[str] = field(default_factory=list)  # what was done to the scan's voxels
    non_finite_replaced: dict | None = None  # counts and value, with --non-finite replace-min


@dataclass
class PredictReport:
    """All outcomes of a predict run."""

    out_dir: Path
    outcomes: list[ScanOutcome] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when every scan was predicted, 1 otherwise."""
        return 0 if all(o.ok for o in self.outcomes) else 1


def predict_path(
    input_path: Path,
    model: PackagedModel,
    *,
    out_dir: Path,
    options: PredictionOptions,
    case_ids: CaseIdScheme = CaseIdScheme.HASH,
    outputs: ScanOutputs = ScanOutputs(),
    on_progress: ProgressCallback | None = None,
) -> PredictReport:
    """Predict every scan at or under ``input_path`` into ``out_dir``, with the ``outputs``
    asked for (see ``ScanOutputs``; ``<case_id>.probabilities.npz`` is float16 ``(K, X, Y,
    Z)`` on the scan's closest-RAS grid with its affine).

    With ``options.structures``, every output holds only those structures, and
    ``predict_report.json`` names them under ``structures``.

    Raises:
        UnknownFormatError: ``outputs.output_format`` is not a registered format (before any
            work).
        UnknownChoiceError: ``options.structures`` names a structure the model lacks.
        ConfigError: see :func:`check_outputs`; ``options.fast`` and a model without a
            low-resolution configuration.
    """
    format_named(outputs.output_format)
    model = model.for_prediction(fast=options.fast)
    check_outputs(model, options, outputs)
    selected = options.selected_structures(model.label_names)
    out_dir = Path(out_dir)
    staging = out_dir / STAGING_FOLDER
    shutil.rmtree(staging, ignore_errors=True)  # a killed run's
    found = discover_scans(
        input_path,
        case_ids=case_ids,
        exclude=out_dir.resolve(),
        on_progress=on_progress,
        channels=model.in_channels,
    )
    logger.info("predicting with %s: %s", model.source, model.description)
    predictors = scan_predictors(model, options, cache_dir=model_cache_folder(out_dir))
    report = PredictReport(out_dir=out_dir)
    report.outcomes += [
        ScanOutcome(f.case_id, f.source, ok=False, reason=f.reason, error_type=f.error_type)
        for f in found.failed_inputs()
    ]
    try:
        for done, task in enumerate(found.tasks):
            if on_progress:
                on_progress("Predicting", done, len(found.tasks))
            outcome = predict_task(
                task,
                model,
                options=options,
                predictors=predictors,
                out_dir=staging / task.case_id,
                outputs=outputs,
                on_windows=_WindowCounter(on_progress),
            )
            with shutdown.deferred():  # a stop waits until the case's files are all moved
                _publish(
                    staging / task.case_id, out_dir, task.case_id, outcome, outputs.output_format
                )
            report.outcomes.append(outcome)
        if on_progress:
            on_progress("Predicting", len(found.tasks), len(found.tasks))
    finally:  # also when stopped: the case in progress is dropped
        shutil.rmtree(staging, ignore_errors=True)
    write_json_atomic(
        out_dir / "predict_report.json",
        {
            "medseg_version": __version__,
            "model": model.source,
            "model_members": len(model.members),
            **({"structures": list(selected.values())} if selected else {}),
            "fast": options.fast,
            "case_ids": found.case_ids.value,
            "outcomes": [vars(o) for o in report.outcomes],
            **found.report(),
        },
    )
    return report


def check_outputs(model: PackagedModel, options: PredictionOptions, outputs: ScanOutputs) -> None:
    """Refuse outputs that cannot be made with these options and this model.

    Raises:
        ConfigError: ``options.structures`` with ``outputs.probabilities`` or
            ``outputs.uncertainty`` (both need every class); ``outputs.uncertainty`` with a
            region-based model (no softmax over classes).
    """
    if options.structures and (outputs.probabilities or outputs.uncertainty):
        raise ConfigError(
            "structures: the probabilities and the uncertainty map need every class; "
            "ask for them without structures"
        )
    if outputs.uncertainty and model.plan.region_set is not None:
        raise ConfigError(
            f"{model.source or 'model'}: the uncertainty map is the entropy of a softmax over "
            "classes; this model predicts overlapping regions"
        )


def _publish(
    staging: Path, out_dir: Path, case_id: str, outcome: ScanOutcome, output_format: str
) -> None:
    """Move a finished case's files from ``staging`` into ``out_dir``, the label map last,
    after removing what an earlier run wrote for it (its label map in any format first); a
    failed case only loses the latter."""
    names = output_names(case_id, output_format)
    earlier = [output_name(case_id, fmt) for fmt in registered_formats()] + names[:-1]
    for name in earlier:  # the old label maps first: the case is incomplete
        if (out_dir / name).is_dir():
            shutil.rmtree(out_dir / name)
        (out_dir / name).unlink(missing_ok=True)
    if outcome.ok:
        for name in names:
            if (staging / name).exists():
                os.replace(staging / name, out_dir / name)
    shutil.rmtree(staging, ignore_errors=True)


class _WindowCounter:
    """Feeds a 'Windows' progress bar from the sliding window's per-batch callback."""

    def __init__(self, on_progress: ProgressCallback | None) -> None:
        self.on_progress, self.done = on_progress, 0

    def __call__(self, count: int) -> None:
        self.done += count
        if self.on_progress:
            self.on_progress("Windows", self.done, max(self.done, 1))


def _write_uncertainty(entropy: Volume, out_dir: Path, case_id: str) -> Path:
    """``<case_id>.uncertainty.nii.gz``: 8-bit steps of 1/255 (scl_slope), as NIfTI has no
    float16."""
    steps = np.rint(np.clip(entropy.array, 0.0, 1.0) * 255).astype(np.uint8)
    path = out_dir / f"{case_id}{UNCERTAINTY_SUFFIX}"
    return write_nifti(entropy.with_array(steps), path, slope=1 / 255)


def _write_rtstruct(
    task: ScanTask, labels: Volume, model: PackagedModel, out_dir: Path
) -> list[Path]:
    """``<case_id>_rtstruct.dcm`` for a DICOM input; for another, a warning and nothing."""
    if task.series is None:
        logger.warning("%s: not a DICOM series: no RTSTRUCT written", task.public_name)
        return []
    from medseg.io.dicom.rtstruct import write_rtstruct

    path = write_rtstruct(
        labels,
        source_files=task.series.files,
        label_names=model.label_names,
        out_path=out_dir / f"{task.case_id}{RTSTRUCT_SUFFIX}",
        algorithm_version=__version__,
    )
    return [path]


def _probability_writer(
    path: Path | None, scan: Volume, model: PackagedModel
) -> contextlib.AbstractContextManager[ProbabilityWriter | None]:
    """Where ``predict_scan`` streams the class probability maps: ``path`` (float16 ``(K, X,
    Y, Z)`` on the scan's closest-RAS grid with its affine), or nowhere when ``path`` is None."""
    if path is None:
        return contextlib.nullcontext()
    ras = scan.to_closest_ras()
    return ProbabilityWriter(
        path, classes=model.plan.num_outputs, shape=ras.array.shape[:3], affine_ras=ras.affine_ras
    )


def scan_predictors(
    model: PackagedModel, options: PredictionOptions, *, cache_dir: Path
) -> list[nn.Module]:
    """What ``predict_scan`` runs, one module per member (``model.members_to_run``: with the
    cascade's low-resolution members for ``--structures``): the torch networks, or their exports
    for ``options.backend`` (those stored with the model, else exported into ``cache_dir``;
    build them once per process, not per scan). ``auto`` options are resolved first
    (``resolve_model_options``).

    Raises:
        PrecisionRefusedError: see ``resolve_model_options``.
    """
    options = resolve_model_options(options, model)
    if options.backend == "torch":
        return [member.network for member in model.members_to_run(options)]
    from medseg.infer.backends import make_predictor

    return [
        make_predictor(
            member.network,
            backend=options.backend,
            patch_size=model.plan.configurations[member.configuration].patch_size,
            in_channels=model.in_channels,
            batch_size=options.batch_size,
            cache_dir=cache_dir,
            precision=options.precision,
            exports=member.exports,
        )
        for member in model.members_to_run(options)
    ]


def resolve_model_options(options: PredictionOptions, model: PackagedModel) -> PredictionOptions:
    """``options`` with ``auto`` backend and precision resolved for this machine and ``model``
    (``medseg.infer.auto``); unchanged when both are given.

    Raises:
        PrecisionRefusedError: bf16 asked for a model whose stored agreement with fp32 is
            below 99.9% or missing.
    """
    return resolve_options(
        options, agreement=model.precision_agreement, model=model.source or "model"
    )


def predict_task(
    task: ScanTask,
    model: PackagedModel,
    *,
    options: PredictionOptions,
    predictors: Sequence[nn.Module] | None,
    out_dir: Path,
    outputs: ScanOutputs = ScanOutputs(),
    on_windows: Callable[[int], None] | None = None,
) -> ScanOutcome:
    """Load one scan, predict it and write its outputs into ``out_dir``; never raises.

    Writes ``<case_id>.nii.gz`` (or ``.nrrd``, ``.mha``... for ``outputs.output_format``),
    ``<case_id>.volumes.json`` and what else ``outputs`` asks for: ``<case_id>_seg.dcm``
    (DICOM input), ``<case_id>.probabilities.npz`` (streamed class by class),
    ``<case_id>.meshes/``,
    ``<case_id>_rtstruct.dcm`` (DICOM input; other inputs: a warning);
    ``<case_id>.radiomics.json`` and ``.csv``; ``<case_id>.uncertainty.nii.gz``. Any
    error becomes a failed ``ScanOutcome`` with the reason and the error's type (files
    already written stay: write into a staging folder). ``predictors`` come from
    ``scan_predictors`` (None: the members' own networks). Reasons and log lines name the scan
    by ``task.public_name``.
    """
    start = time.perf_counter()
    source = task.source if task.paths_shown else None
    try:
        volume = task.read(options.non_finite)
        probabilities = out_dir / f"{task.case_id}{PROBABILITIES_SUFFIX}"
        kept = probabilities if outputs.probabilities else None
        uncertainty: list[Volume] | None = [] if outputs.uncertainty else None
        with _probability_writer(kept, volume, model) as writer:
            labels = predict_scan(
                volume,
                model,
                options=options,
                predictors=predictors,
                case_id=task.case_id,
                on_windows=on_windows,
                probabilities_out=writer,
                uncertainty_out=uncertainty,
            )
        label_names = options.selected_structures(model.label_names) or model.label_names
        label_path = out_dir / output_name(task.case_id, outputs.output_format)
        written = [write_volume(labels, label_path, outputs.output_format)]
        if kept is not None:
            written.append(kept)
        if uncertainty:
            written.append(_write_uncertainty(uncertainty.pop(), out_dir, task.case_id))
        statistics = structure_statistics(labels, label_names=label_names, image=volume)
        spread = intensity_spread(labels, volume, label_names=label_names)
        scores = labels.metadata.get("confidence", {})
        volumes: dict[str, dict] = {
            k: v | spread[k] | scores.get(k, {}) for k, v in statistics.items()
        }
        if outputs.meshes:
            folder = out_dir / f"{task.case_id}{MESHES_SUFFIX}"
            areas = write_meshes(labels, label_names, folder)
            for name in volumes:
                volumes[name]["surface_area_mm2"] = areas.get(name, 0.0)
            written.append(folder)
        if outputs.radiomics:
            written += write_radiomics(
                labels, volume, model.label_names, out_dir=out_dir, case_id=task.case_id
            )
        volumes_path = out_dir / f"{task.case_id}.volumes.json"
        write_json_atomic(volumes_path, volumes)
        written.append(volumes_path)
        if outputs.dicom_seg and task.series is not None:
            from medseg.io.dicom.seg import write_dicom_seg

            written.append(
                write_dicom_seg(
                    labels,
                    source_files=task.series.files,
                    label_names=label_names,
                    out_path=out_dir / f"{task.case_id}_seg.dcm",
                    algorithm_version=__version__,
                )
            )
        if outputs.rtstruct:
            written.extend(_write_rtstruct(task, labels, model, out_dir))
    except MedsegError as error:
        reason, error_type = task.error_message(error), type(error).__name__
        logger.warning("%s", reason)
    except Exception as error:  # one bad scan must never stop the others
        shutdown.reraise_if_stopping(error)
        reason = task.error_message(RuntimeError(f"unexpected {type(error).__name__}: {error}"))
        error_type = type(error).__name__
        logger.error("%s", reason)
        logger.debug("%s", task.redact(traceback.format_exc()))
    else:
        return ScanOutcome(
            task.case_id,
            source,
            ok=True,
            seconds=time.perf_counter() - start,
            outputs=[Path(p).name for p in written],
            volumes_ml={name: s["volume_ml"] for name, s in statistics.items()},
            confidence={name: s["confidence"] for name, s in scores.items() if name in statistics},
            corrections=list(volume.metadata.get("corrections", [])),
            non_finite_replaced=volume.metadata.get("non_finite_replaced"),
        )
    return ScanOutcome(
        task.case_id,
        source,
        ok=False,
        reason=reason,
        seconds=time.perf_counter() - start,
        error_type=error_type,
    )
