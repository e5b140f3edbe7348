"""Data stages: ``ingest`` (scans -> volumes + manifest), ``import-dataset`` (an MSD-style
dataset or a shipped manifest), ``plan`` and ``preprocess``.

They provide ``manifest`` (path), ``manifest_data_root`` (the folder its paths are relative
to, or None for the manifest's own folder), ``plan`` and ``cache``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from medseg.ingest.case_ids import CaseIdScheme
from medseg.ingest.non_finite import NonFinitePolicy
from medseg.pipeline.stages.base import (
    StageContext,
    StageDefinition,
    StageOptions,
    StageResult,
    no_inputs,
)

if TYPE_CHECKING:
    from medseg.tracking.runs import RunTracker

# --- ingest ------------------------------------------------------------------------------------


class IngestOptions(StageOptions):
    """Options of ``stage: ingest``; paths are relative to the data root, except ``channels``
    (a DICOM channel rule, ``medseg ingest --channels``), relative to the config root."""

    input: str
    labels: str | None = None  # folder of <case_id>.nii.gz (.nrrd, .mha...) label maps
    label_names: str | None = None  # JSON {"1": "liver", ...} or a dataset.json with "labels"
    case_ids: CaseIdScheme = CaseIdScheme.HASH
    non_finite: NonFinitePolicy = NonFinitePolicy.ERROR  # scans with NaN/Inf voxels
    workers: int | None = Field(None, ge=1)
    val_fraction: float = Field(0.0, ge=0, lt=1)  # of the labelled scans, for validation
    test_fraction: float = Field(0.0, ge=0, lt=1)
    seed: int = 0  # of the reproducible split assignment
    channels: str | None = None  # rule.yaml: the series of a study that become one case's channels


def _ingest_inputs(ctx: StageContext, options: IngestOptions) -> dict[str, Path]:
    paths = {"input": ctx.data(options.input)}
    if options.labels:
        paths["labels"] = ctx.data(options.labels)
    if options.label_names:
        paths["label_names"] = ctx.data(options.label_names)
    if options.channels:
        paths["channels"] = ctx.config(options.channels)
    return paths


def _ingest(ctx: StageContext, options: IngestOptions, run: RunTracker | None) -> StageResult:
    from medseg.ingest import ingest
    from medseg.ingest.channel_rule import load_channel_rule
    from medseg.ingest.stage import OutcomeKind
    from medseg.manifest import (
        load_label_names,
        load_regions,
        read_manifest,
        with_splits,
        write_label_names,
        write_manifest,
    )

    paths = _ingest_inputs(ctx, options)
    report = ingest(
        paths["input"],
        ctx.folder,
        case_ids=options.case_ids,
        labels_dir=paths.get("labels"),
        workers=options.workers,
        non_finite=options.non_finite,
        on_progress=ctx.on_progress,
        channel_rule=load_channel_rule(paths["channels"]) if "channels" in paths else None,
    )
    if "label_names" in paths:
        names_file = paths["label_names"]
        write_label_names(
            load_label_names(names_file), report.manifest_path, regions=load_regions(names_file)
        )
    if options.val_fraction or options.test_fraction:
        records = with_splits(
            read_manifest(report.manifest_path),
            seed=options.seed,
            val_fraction=options.val_fraction,
            test_fraction=options.test_fraction,
        )
        write_manifest(records, report.manifest_path)
    converted = report.of_kind(OutcomeKind.CONVERTED, OutcomeKind.UNCHANGED)
    failed = report.of_kind(OutcomeKind.FAILED)
    return StageResult(
        provides={"manifest": report.manifest_path, "manifest_data_root": None},
        metrics={"scans": len(converted), "scans_failed": len(failed)},
        problems=[f"{o.source or o.case_id}: {o.reason}" for o in failed],
        summary={"scans": len(converted), "failed": len(failed)},
    )


# --- import-dataset ----------------------------------------------------------------------------


class ImportOptions(StageOptions):
    """Options of ``stage: import-dataset``: exactly one of ``dataset`` and ``manifest``.

    ``dataset`` is an MSD/nnU-Net folder under the data root, imported into a new manifest;
    ``manifest`` is a shipped manifest (under the config root, e.g. ``data_manifests/``) whose
    paths are relative to the data root: it is validated, and cases with problems are left out
    (and reported).
    """

    dataset: str | None = None
    manifest: str | None = None
    val_fraction: float = Field(0.2, ge=0, lt=1)
    test_fraction: float = Field(0.0, ge=0, lt=1)
    seed: int = 0
    modality: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ImportOptions:
        if (self.dataset is None) == (self.manifest is None):
            raise ValueError("give exactly one of 'dataset' and 'manifest'")
        return self


def _import_inputs(ctx: StageContext, options: ImportOptions) -> dict[str, Path]:
    if options.dataset is not None:
        return {"dataset": ctx.data(options.dataset)}
    from medseg.manifest import label_names_path, read_manifest, resolve

    assert options.manifest is not None  # ImportOptions: exactly one of dataset and manifest
    manifest = ctx.config(options.manifest)
    paths = {"manifest": manifest, "label_names": label_names_path(manifest)}
    for record in read_manifest(manifest):  # only the files it names, not the whole data root
        image, label = resolve(record, manifest_path=manifest, data_root=ctx.data_root)
        paths[f"{record.case_id}/image"] = image
        if label is not None:
            paths[f"{record.case_id}/label"] = label
    return paths


def _import(ctx: StageContext, options: ImportOptions, run: RunTracker | None) -> StageResult:
    if options.dataset is not None:
        from medseg.datasets import import_dataset

        report = import_dataset(
            ctx.data(options.dataset),
            manifest_path=ctx.folder / "manifest.jsonl",
            seed=options.seed,
            val_fraction=options.val_fraction,
            test_fraction=options.test_fraction,
            data_root=ctx.data_root,
            modality=options.modality,
        )
        problems = [f"{p.case_id}: {p.detail}" for p in report.rejected]
        return _manifest_result(ctx, report.manifest_path, problems)
    assert options.manifest is not None  # ImportOptions: exactly one of dataset and manifest
    return _validated_copy(ctx, ctx.config(options.manifest))


def _validated_copy(ctx: StageContext, source: Path) -> StageResult:
    from medseg.manifest import (
        read_label_names,
        read_manifest,
        read_regions,
        write_label_names,
        write_manifest,
    )
    from medseg.manifest_validation import validate_manifest

    validation = validate_manifest(source, data_root=ctx.data_root)
    bad = validation.by_case()
    target = ctx.folder / "manifest.jsonl"
    write_manifest([r for r in read_manifest(source) if r.case_id not in bad], target)
    write_label_names(read_label_names(source), target, regions=read_regions(source))
    problems = [f"{case}: {p.detail}" for case, found in bad.items() for p in found]
    return _manifest_result(ctx, target, problems)


def _manifest_result(ctx: StageContext, manifest: Path, problems: list[str]) -> StageResult:
    from collections import Counter

    from medseg.manifest import read_manifest

    splits = Counter(str(r.split) for r in read_manifest(manifest))
    return StageResult(
        provides={"manifest": manifest, "manifest_data_root": ctx.data_root},
        metrics={f"cases_{split}": n for split, n in splits.items()},
        problems=problems,
        summary={"cases": dict(splits), "left out": len(problems)},
    )


# --- plan and preprocess -----------------------------------------------------------------------


class PlanStageOptions(StageOptions):
    """Options of ``stage: plan``: a plan config (under the config root) and workers."""

    config: str | None = None
    workers: int = Field(2, ge=1)


def _plan_inputs(ctx: StageContext, options: PlanStageOptions) -> dict[str, Path]:
    return {"config": ctx.config(options.config)} if options.config else {}


def _plan(ctx: StageContext, options: PlanStageOptions, run: RunTracker | None) -> StageResult:
    from medseg.preprocess.config import load_plan_options
    from medseg.preprocess.plan import plan_manifest

    config = ctx.config(options.config) if options.config else None
    plan = plan_manifest(
        ctx.need("manifest"),
        options=load_plan_options(config),
        data_root=ctx.provided.get("manifest_data_root"),
        workers=options.workers,
    )
    path = plan.save(ctx.folder / "plan.json")
    shapes = {name: c.patch_size for name, c in plan.configurations.items()}
    return StageResult(
        provides={"plan": path},
        params={"target_spacing": plan.target_spacing, "patch_size": shapes},
        summary={"target spacing (mm)": plan.target_spacing, "patch sizes": shapes},
    )


class PreprocessStageOptions(StageOptions):
    """Options of ``stage: preprocess``."""

    workers: int = Field(2, ge=1)


def _preprocess(
    ctx: StageContext, options: PreprocessStageOptions, run: RunTracker | None
) -> StageResult:
    from medseg.preprocess.plan import Plan
    from medseg.preprocess.stage import CaseStatus, preprocess_manifest

    report = preprocess_manifest(
        ctx.need("manifest"),
        plan=Plan.load(ctx.need("plan")),
        cache_dir=ctx.folder / "cache",
        data_root=ctx.provided.get("manifest_data_root"),
        workers=options.workers,
        on_progress=ctx.on_progress,
    )
    failed = report.with_status(CaseStatus.FAILED)
    return StageResult(
        provides={"cache": report.cache_dir},
        metrics={"cases": len(report.outcomes) - len(failed), "cases_failed": len(failed)},
        problems=[f"{o.case_id}: {o.reason}" for o in failed],
        summary={"cases": len(report.outcomes), "failed": len(failed)},
    )


DATA_STAGES = (
    StageDefinition("ingest", IngestOptions, lambda o: (), _ingest_inputs, _ingest),
    StageDefinition("import-dataset", ImportOptions, lambda o: (), _import_inputs, _import),
    StageDefinition("plan", PlanStageOptions, lambda o: ("manifest",), _plan_inputs, _plan),
    StageDefinition(
        "preprocess", PreprocessStageOptions, lambda o: ("manifest", "plan"), no_inputs, _preprocess
    ),
)
