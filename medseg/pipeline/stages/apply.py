"""Stages that apply a model: ``predict`` (provides ``predictions``, ``scans``) and
``evaluate`` (provides ``report``).

Both take their cases either from a folder under the data root (``input``/``references``) or
from a split of the pipeline's manifest (``split: test``): the split's images (or labels) are
linked into the stage folder as ``<case_id>.nii.gz`` (``.nrrd``, ``.nhdr``, ``.mha``... for
files of another format; a detached header's data files are linked beside it under the names
its header gives), so predictions pair with references by case id.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from medseg.errors import PipelineError, UnknownFormatError
from medseg.infer.options import PredictionOptions
from medseg.ingest.case_ids import CaseIdScheme
from medseg.io.formats import (
    data_files,
    format_named,
    is_volume_path,
    output_name,
    volume_suffix,
)
from medseg.pipeline.stages.base import StageContext, StageDefinition, StageOptions, StageResult

Split = Literal["train", "val", "test"]


class _FolderOrSplit(StageOptions):
    """Exactly one of a data-root folder and a manifest split."""

    split: Split | None = None

    def _folder(self) -> str | None:
        raise NotImplementedError

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self._folder() is None) == (self.split is None):
            raise ValueError("give exactly one of a folder under the data root and 'split'")
        return self


def _link_split(ctx: StageContext, split: str, *, labels: bool, folder: Path) -> Path:
    """Link the images (or labels) of ``split`` as ``folder/<case_id>.nii.gz`` (their own
    suffix: ``.nrrd``, ``.nhdr``...), with the data files of detached headers (``.nhdr``,
    ``.mhd``) beside them under the names their headers give.

    Raises:
        PipelineError: the split is empty, or a detached header's data file cannot be linked
            (outside the header's folder, or named like another case's).
    """
    from medseg.manifest import read_manifest, resolve

    manifest = ctx.need("manifest")
    records = [r for r in read_manifest(manifest) if r.split == split]
    if not records:
        raise PipelineError(f"stage {ctx.name!r}: the manifest has no {split!r} cases")
    folder.mkdir(parents=True, exist_ok=True)
    data_links: dict[Path, str] = {}  # link of a data file -> its case
    for record in records:
        image, label = resolve(
            record, manifest_path=manifest, data_root=ctx.provided.get("manifest_data_root")
        )
        source = label if labels else image
        if source is None:
            continue
        _replace_link(folder / f"{record.case_id}{_suffix(source)}", source)
        for data in data_files(source):
            link = _data_file_link(ctx, record.case_id, source, data, folder)
            if link is None:
                continue
            if link in data_links:
                raise PipelineError(
                    f"stage {ctx.name!r}: cases {data_links[link]} and {record.case_id} both "
                    f"keep their voxels in a data file named {link.relative_to(folder)}; "
                    "rename one (and its header's data file field) to link both"
                )
            data_links[link] = record.case_id
            _replace_link(link, data)
    return folder


def _data_file_link(
    ctx: StageContext, case_id: str, header: Path, data: Path, folder: Path
) -> Path | None:
    """Where a detached header's data file must be linked for the header's link in ``folder``
    to find it; None for a data file named by absolute path (found from anywhere)."""
    try:
        relative = data.relative_to(header.parent)
    except ValueError:
        return None  # an absolute path elsewhere
    if ".." in relative.parts:
        raise PipelineError(
            f"stage {ctx.name!r}: case {case_id}: the data file {relative} of {header.name} is "
            "outside the header's folder; keep it beside the header or name it by absolute path"
        )
    return folder / relative


def _suffix(path: Path) -> str:
    """The file's own suffix in lower case (``.nhdr`` stays a detached header), ``.nii.gz``
    for a file of no registered format."""
    return volume_suffix(path).lower() or output_name("", "nifti")


def _replace_link(link: Path, target: Path) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)


# --- predict -----------------------------------------------------------------------------------


class PredictStageOptions(_FolderOrSplit, PredictionOptions):
    """Options of ``stage: predict``: the prediction options (``PredictionOptions``: overlap,
    batch_size, mirror, keep_largest, crf, backend, precision, non_finite, structures), where
    the scans are, ``model``, which overrides the model of the register stage, the label maps'
    ``output_format`` (``nifti``, ``nrrd``, ``mha``: as ``batch --output-format``) and
    ``meshes`` (as ``batch --meshes``) and ``radiomics`` (as ``batch --radiomics``)."""

    input: str | None = None
    model: str | None = None
    case_ids: CaseIdScheme = CaseIdScheme.HASH
    dicom_seg: bool = True
    output_format: str = "nifti"
    meshes: bool = False
    rtstruct: bool = False  # as batch --rtstruct
    radiomics: bool = False
    workers: int = Field(1, ge=1)  # scans in parallel, each in its own process

    def _folder(self) -> str | None:
        return self.input

    @field_validator("output_format")
    @classmethod
    def _registered_format(cls, name: str) -> str:
        try:
            return format_named(name).name
        except UnknownFormatError as error:
            raise ValueError(str(error)) from error

    def prediction(self) -> PredictionOptions:
        """The prediction options alone."""
        return PredictionOptions(**{name: getattr(self, name) for name in PREDICTION_FIELDS})


PREDICTION_FIELDS = tuple(PredictionOptions.model_fields)


def _predict_needs(options: PredictStageOptions) -> tuple[str, ...]:
    return (() if options.model else ("model_uri",)) + (("manifest",) if options.split else ())


def _predict_inputs(ctx: StageContext, options: PredictStageOptions) -> dict[str, Path]:
    return {"input": ctx.data(options.input)} if options.input else {}


def _predict(ctx: StageContext, options: PredictStageOptions, run: Any) -> StageResult:
    from medseg.batch.runner import BatchSettings, run_batch
    from medseg.infer.outputs import ScanOutputs

    if options.split:
        scans = _link_split(ctx, options.split, labels=False, folder=ctx.folder / "scans")
        case_ids = CaseIdScheme.FOLDER  # the manifest's case ids, not patient data
    else:
        assert options.input is not None  # StageOptions: a split or a folder
        scans, case_ids = ctx.data(options.input), options.case_ids
    model_uri = options.model or ctx.need("model_uri")
    predictions = ctx.folder / "predictions"
    if not ctx.resume and predictions.exists():  # inputs or model changed: start afresh
        shutil.rmtree(predictions)
    settings = BatchSettings(
        workers=options.workers,
        options=options.prediction(),
        case_ids=case_ids,
        outputs=ScanOutputs(
            output_format=options.output_format,
            dicom_seg=options.dicom_seg,
            meshes=options.meshes,
            rtstruct=options.rtstruct,
            radiomics=options.radiomics,
        ),
        tracking_uri=ctx.tracking_uri,
        experiment=ctx.experiment,
    )
    report = run_batch(
        scans,
        model_uri,
        predictions,
        settings=settings,
        parent_run_id=ctx.parent_run_id,
        on_progress=ctx.on_progress,
    )
    done = len(report.done) + len(report.skipped)
    assert report.summary is not None  # run_batch writes the summary files
    return StageResult(
        provides={"predictions": predictions, "scans": scans, "summary_csv": report.summary.csv},
        problems=[f"{f.case_id}: {f.reason}" for f in report.failed],
        run_id=report.tracking.run_id,
        summary={
            "scans": done,
            "failed": len(report.failed),
            "seconds per scan": round(_mean([r.seconds for r in report.done]), 1),
            "summary": str(report.summary.csv),
            **({"ensemble members": report.ensemble_members} if report.ensemble_members else {}),
        },
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


# --- evaluate ----------------------------------------------------------------------------------


class EvaluateStageOptions(_FolderOrSplit):
    """Options of ``stage: evaluate``: references and (optional) scans for the pictures."""

    references: str | None = None
    images: str | None = None  # folder of <case_id>.nii.gz (.nrrd...) scans (default: predict's)
    tolerance_mm: float = Field(1.0, gt=0)

    def _folder(self) -> str | None:
        return self.references


def _evaluate_inputs(ctx: StageContext, options: EvaluateStageOptions) -> dict[str, Path]:
    paths = {}
    if options.references:
        paths["references"] = ctx.data(options.references)
    if options.images:
        paths["images"] = ctx.data(options.images)
    return paths


def _evaluate(ctx: StageContext, options: EvaluateStageOptions, run: Any) -> StageResult:
    from medseg.evaluate.pairing import pair_label_maps
    from medseg.evaluate.report import log_evaluation, summary, write_reports
    from medseg.evaluate.stage import evaluate_pairing
    from medseg.manifest import read_label_names, read_regions

    if options.split:
        folder = ctx.folder / "references"
        references = _link_split(ctx, options.split, labels=True, folder=folder)
    else:
        assert options.references is not None  # StageOptions: a split or a folder
        references = ctx.data(options.references)
    pairing = pair_label_maps(ctx.need("predictions"), references)
    manifest = ctx.need("manifest")
    report = evaluate_pairing(
        pairing,
        label_names=read_label_names(manifest),
        tolerance_mm=options.tolerance_mm,
        regions=read_regions(manifest),
    )
    images = ctx.data(options.images) if options.images else _case_scans(ctx)
    paths = write_reports(report, pairing, out_dir=ctx.folder / "report", images=images)
    result = summary(report)
    if run is not None:
        log_evaluation(run, paths, result)
    problems = [f"{case}: {reason}" for case, reason in report.failed.items()]
    problems += [f"{case}: no prediction" for case in report.missing_prediction]
    mean = {k: v for k, v in result["mean"].items() if v is not None}
    metrics = {f"mean_{k}": v for k, v in mean.items()}
    if result["region_mean_dice"] is not None:
        metrics["region_mean_dice"] = result["region_mean_dice"]
    return StageResult(
        provides={"report": paths["html"]},
        metrics=metrics,
        problems=problems,
        summary={
            "cases": result["cases"],
            "mean Dice": round(mean.get("dice", float("nan")), 4),
            "report": str(paths["html"]),
            "structures": result["structures"],
            **({"regions": result["regions"]} if result["regions"] else {}),
        },
    )


def _case_scans(ctx: StageContext) -> Path | None:
    """The scans predict read, when they are volume files (NIfTI, NRRD...) named after the
    cases."""
    scans = ctx.provided.get("scans")
    if scans is None or not Path(scans).is_dir():
        return None
    if not any(is_volume_path(path) for path in Path(scans).iterdir()):
        return None
    return Path(scans)


EVALUATE_NEEDS = ("predictions", "manifest")

APPLY_STAGES = (
    StageDefinition(
        "predict", PredictStageOptions, _predict_needs, _predict_inputs, _predict, own_run=True
    ),
    StageDefinition(
        "evaluate", EvaluateStageOptions, lambda o: EVALUATE_NEEDS, _evaluate_inputs, _evaluate
    ),
)
