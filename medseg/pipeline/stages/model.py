"""Model stages: ``train`` (provides ``train_run_id``, ``best_mean_dice``), ``cross_validate``
(provides ``cv_dir``, ``cv_mean_dice``, ``cv_run_id``), ``select`` (compares cross_validate
stages by name; with ``model_name`` provides the registered ensemble's ``model_uri``) and
``register`` (provides ``model_uri`` = ``models:/NAME/VERSION`` of the version it
registered)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from medseg.pipeline.stages.base import (
    StageContext,
    StageDefinition,
    StageOptions,
    StageResult,
    no_inputs,
)
from medseg.train.folds import DEFAULT_FOLDS

if TYPE_CHECKING:
    from medseg.preprocess.plan import Plan
    from medseg.tracking.runs import RunTracker


class TrainStageOptions(StageOptions):
    """Options of ``stage: train``: a train config (under the config root) and overrides."""

    config: str | None = None
    max_minutes: float | None = Field(None, gt=0)
    epochs: int | None = Field(None, ge=1)


def _train_inputs(ctx: StageContext, options: TrainStageOptions) -> dict[str, Path]:
    if not options.config:
        return {}
    from medseg.train.config import load_train_config

    config = ctx.config(options.config)
    load_train_config(config)  # a mistake in it is refused before the first stage runs
    return {"config": config}


def _configuration_cache(ctx: StageContext, plan: Plan, configuration: str) -> Path:
    """The preprocess stage's cache, or for a configuration with a spacing of its own
    (``3d_lowres``) its cache beside it, preprocessed here (cases already current are kept)."""
    from medseg.preprocess.stage import preprocess_configuration

    if configuration not in plan.low_resolution:
        return ctx.need("cache")
    return preprocess_configuration(
        ctx.need("manifest"),
        plan=plan,
        configuration=configuration,
        cache_dir=ctx.need("cache"),
        data_root=ctx.provided.get("manifest_data_root"),
    )


def _train(ctx: StageContext, options: TrainStageOptions, run: RunTracker | None) -> StageResult:
    from medseg.preprocess.plan import Plan
    from medseg.train.config import load_train_config
    from medseg.train.loop import train

    settings = load_train_config(
        ctx.config(options.config) if options.config else None,
        max_minutes=options.max_minutes,
        epochs=options.epochs,
    )
    # The pipeline's experiment holds every stage; registration is the register stage's job.
    settings = settings.model_copy(
        update={"experiment": ctx.experiment, "registered_model_name": None}
    )
    checkpoints = ctx.folder / "checkpoints"
    resume = ctx.resume and (checkpoints / "last.pt").exists()
    if not resume and checkpoints.exists():  # a new training must not pick up an old best.pt
        shutil.rmtree(checkpoints)
    steps = settings.epochs * settings.steps_per_epoch
    plan = Plan.load(ctx.need("plan"))
    result = train(
        manifest_path=ctx.need("manifest"),
        plan=plan,
        cache_dir=_configuration_cache(ctx, plan, settings.configuration),
        config=settings,
        run_dir=ctx.folder,
        resume=resume,
        tracking_uri=ctx.tracking_uri,
        parent_run_id=ctx.parent_run_id,
        on_progress=ctx.on_progress,
    )
    return StageResult(
        provides={
            "train_run_id": result.run_id,
            "best_mean_dice": result.best_mean_dice,
            "checkpoint": result.best_checkpoint,
        },
        metrics={"best_val_mean_dice": result.best_mean_dice, "steps": result.state.step},
        run_id=result.run_id,
        summary={
            "steps": f"{result.state.step} of {steps}",
            "stopped by": result.stopped_by,
            "best validation Dice": round(result.best_mean_dice, 4),
            "resumed": resume,
        },
    )


class CrossValidateOptions(TrainStageOptions):
    """Options of ``stage: cross_validate``: a train config, overrides (``max_minutes`` per
    fold) and the number of folds (``splits.json`` beside the plan)."""

    folds: int = Field(DEFAULT_FOLDS, ge=2)


def _cross_validate(
    ctx: StageContext, options: CrossValidateOptions, run: RunTracker | None
) -> StageResult:
    from medseg.preprocess.plan import Plan
    from medseg.train.config import load_train_config
    from medseg.train.cross_validation import cross_validate
    from medseg.train.folds import load_or_make_folds

    settings = load_train_config(
        ctx.config(options.config) if options.config else None,
        max_minutes=options.max_minutes,
        epochs=options.epochs,
    ).model_copy(update={"experiment": ctx.experiment, "registered_model_name": None})
    if not ctx.resume:  # run again from the start: nothing of an earlier attempt is kept
        for old in ctx.folder.iterdir():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    plan_path = ctx.need("plan")
    plan = Plan.load(plan_path)
    result = cross_validate(
        folds=load_or_make_folds(
            plan_path, ctx.need("manifest"), folds=options.folds, seed=plan.seed
        ),
        manifest_path=ctx.need("manifest"),
        plan=plan,
        cache_dir=_configuration_cache(ctx, plan, settings.configuration),
        config=settings,
        run_dir=ctx.folder,
        tracking_uri=ctx.tracking_uri,
        parent_run_id=ctx.parent_run_id,
        on_progress=ctx.on_progress,
    )
    return StageResult(
        provides={
            "cv_dir": ctx.folder,
            "cv_mean_dice": result.mean_dice,
            "cv_run_id": result.run_id,
            cross_validation_key(ctx.name): result.run_id,  # what select stages name
        },
        metrics={"cv_mean_dice": result.mean_dice},
        run_id=result.run_id,
        summary={
            "folds": f"{len(result.folds)} ({len(result.trained)} trained now)",
            "CV mean Dice": round(result.mean_dice, 4),
            **{f"CV Dice {name}": round(dice, 4) for name, dice in result.dice.items()},
        },
    )


def cross_validation_key(stage_name: str) -> str:
    """What a ``cross_validate`` stage named ``stage_name`` provides for ``select`` stages."""
    return f"cross_validation:{stage_name}"


class SelectOptions(StageOptions):
    """Options of ``stage: select``: the ``cross_validate`` stages to compare (by name), and
    the registered model the chosen ensemble becomes (optional)."""

    configurations: list[str] = Field(min_length=1)
    model_name: str | None = None
    alias: str | None = None


def _select(ctx: StageContext, options: SelectOptions, run: RunTracker | None) -> StageResult:
    from medseg.preprocess.plan import Plan
    from medseg.select.stage import run_selection

    outcome = run_selection(
        [ctx.folder.parent / name for name in options.configurations],
        plan=Plan.load(ctx.need("plan")),
        cache_dir=ctx.need("cache"),
        out_dir=ctx.folder,
        experiment=ctx.experiment,
        tracking_uri=ctx.tracking_uri,
        parent_run_id=ctx.parent_run_id,
        register=options.model_name,
        alias=options.alias,
    )
    selection, registered = outcome.selection, outcome.registered
    provides: dict[str, object] = {"selected_cv_mean_dice": selection.best.mean_dice}
    if registered is not None:
        provides |= {
            "model_uri": registered.model_uri,
            "model_name": registered.name,
            "model_version": registered.version,
        }
    return StageResult(
        provides=provides,
        metrics={
            "selected_cv_mean_dice": selection.best.mean_dice,
            "postprocessed_cv_mean_dice": selection.postprocessed_mean_dice,
        },
        run_id=outcome.run_id,
        summary={
            "chosen": selection.best.name,
            "CV mean Dice": round(selection.best.mean_dice, 4),
            "with post-processing": round(selection.postprocessed_mean_dice, 4),
            **({"model": registered.model_uri} if registered is not None else {}),
        },
    )


class RegisterOptions(StageOptions):
    """Options of ``stage: register``: the registered model's name.

    Every registered version gets the alias ``candidate``; ``champion`` moves to it only when
    its validation Dice beats the current champion's
    (``medseg.tracking.registry.register_and_promote``).
    """

    model_name: str


def _register(ctx: StageContext, options: RegisterOptions, run: RunTracker | None) -> StageResult:
    from medseg.tracking.registry import register_and_promote, register_run_model

    version = register_run_model(
        ctx.need("train_run_id"), name=options.model_name, tracking_uri=ctx.tracking_uri
    )
    promotion = register_and_promote(
        version,
        name=options.model_name,
        metric=ctx.need("best_mean_dice"),
        tracking_uri=ctx.tracking_uri,
    )
    uri = f"models:/{options.model_name}/{version}"
    return StageResult(
        provides={"model_uri": uri, "model_name": options.model_name, "model_version": version},
        params={"model_name": options.model_name, "model_version": version},
        metrics={"promoted_to_champion": float(promotion.promoted)},
        summary={
            "model": uri,
            "champion": f"models:/{options.model_name}@champion (version "
            f"{promotion.champion_version})",
        },
    )


MODEL_STAGES = (
    StageDefinition(
        "train",
        TrainStageOptions,
        lambda o: ("manifest", "plan", "cache"),
        _train_inputs,
        _train,
        own_run=True,
        deterministic=False,
    ),
    StageDefinition(
        "cross_validate",
        CrossValidateOptions,
        lambda o: ("manifest", "plan", "cache"),
        _train_inputs,
        _cross_validate,
        own_run=True,
        deterministic=False,
    ),
    StageDefinition(
        "select",
        SelectOptions,
        lambda o: ("plan", "cache", *(cross_validation_key(name) for name in o.configurations)),
        no_inputs,
        _select,
        own_run=True,
        deterministic=False,
    ),
    StageDefinition(
        "register",
        RegisterOptions,
        lambda o: ("train_run_id", "best_mean_dice"),
        no_inputs,
        _register,
        deterministic=False,
    ),
)
