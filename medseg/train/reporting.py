"""What a training run tells MLflow: params, tags, per-epoch metrics, curves, pictures, model.

All MLflow calls go through ``medseg.tracking``; on ranks other than 0 every method is a no-op.
Nothing identifying is logged: params are the resolved config and plan (no file paths), tags
are the medseg version, the git commit and the manifest's SHA-256.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure
from torch import nn

from medseg.errors import BackendError
from medseg.io.atomic import atomic_path, write_json_atomic
from medseg.manifest import sha256_file
from medseg.models.pretrained import EncoderTransfer, describe_source
from medseg.preprocess.plan import Plan
from medseg.train.config import TrainConfig
from medseg.train.validation import ValidationResult

if TYPE_CHECKING:
    from medseg.infer.agreement import PackageExports
    from medseg.tracking.runs import RunTracker

logger = logging.getLogger(__name__)

MODEL_FACTORY = "medseg.models:build_network"


@dataclass(frozen=True)
class TrainedNetwork:
    """What packaging the trained model needs from the training job.

    Args:
        network: the bare network (not wrapped for DDP); the best weights are loaded into it.
        arguments: the keyword arguments of ``MODEL_FACTORY`` that rebuild it.
        patch_size: the spatial patch size it was trained on (shapes the input example).
        mirror_axes: the axes training mirrored (None: all), the only ones test-time mirroring
            may flip.
        slice_axis: the axis a 2D network's slices are perpendicular to (None: 3D).
        validation_images: the first validation cases' images, on which the agreement of
            reduced precisions with fp32 is measured (``medseg.infer.agreement``).
        calibration_patches: training patches the network is quantized to int8 on (none:
            no int8; ``medseg train --int8``).
    """

    network: nn.Module
    arguments: dict[str, Any]
    patch_size: Sequence[int]
    mirror_axes: Sequence[int] | None
    slice_axis: int | None = None
    validation_images: Sequence[np.ndarray] = ()
    calibration_patches: Sequence[np.ndarray] = ()


@dataclass
class TrainingReporter:
    """Logs one training run; a disabled reporter (non-main ranks) does nothing."""

    tracker: RunTracker | None
    plan: Plan
    config: TrainConfig
    run_dir: Path

    @classmethod
    def start(
        cls,
        *,
        enabled: bool,
        tracking_uri: str | None,
        config: TrainConfig,
        plan: Plan,
        manifest_path: Path,
        run_dir: Path,
        run_id: str | None,
        parent_run_id: str | None = None,
        fold: int | None = None,
    ) -> TrainingReporter:
        """Open (or, when resuming, reopen) the MLflow run and log params and tags.

        Runs that a killed training in ``run_dir`` left RUNNING are marked FAILED first, so
        a resumed run is marked, then reopened, and ends FINISHED.
        """
        if not enabled:
            return cls(None, plan, config, run_dir)
        from medseg.tracking.runs import RunTracker
        from medseg.tracking.stale import mark_stale_runs

        mark_stale_runs(run_dir, tracking_uri)
        tracker = RunTracker(tracking_uri=tracking_uri, home=run_dir, role="train")
        in_fold = {} if fold is None else {"medseg.fold": str(fold)}
        tracker.start(
            experiment=config.experiment,
            run_name=f"train-{config.configuration}-{config.architecture}"
            + ("" if fold is None else f"-fold{fold}"),
            tags={"medseg.stage": "train", **in_fold},
            manifest_sha256=sha256_file(manifest_path),
            run_id=run_id,
            parent_run_id=parent_run_id if run_id is None else None,
            nested=run_id is not None and parent_run_id is not None,
        )
        if run_id is None:
            logged = config.model_dump(mode="json")
            if config.pretrained_encoder is not None:  # no local paths in MLflow
                source = describe_source(config.pretrained_encoder.source)
                logged["pretrained_encoder"]["source"] = source
            fold_param = {} if fold is None else {"fold": fold}
            tracker.log_params({"config": logged, "plan": _plan_params(plan), **fold_param})
            tracker.log_dict(logged, "config/train_config.json")
            tracker.log_dict(plan.model_dump(mode="json"), "config/plan.json")
        return cls(tracker, plan, config, run_dir)

    def log_encoder_transfer(self, transfer: EncoderTransfer) -> None:
        """How many encoder tensors came from the pretrained source."""
        if self.tracker is None:
            return
        self.tracker.log_params(
            {
                "pretrained_encoder.loaded_tensors": len(transfer.loaded),
                "pretrained_encoder.skipped_tensors": len(transfer.skipped),
            }
        )

    @property
    def run_id(self) -> str | None:
        return self.tracker.run_id if self.tracker is not None else None

    def validation_metrics(self, result: ValidationResult) -> dict[str, float]:
        """Per-structure validation Dice named after the structures, plus the mean."""
        metrics = {"val_mean_dice": result.mean_dice}
        for label, dice in result.dice.items():
            name = self.plan.label_names.get(label, f"label_{label}")
            metrics[f"val_dice_{name}"] = dice
        return metrics

    def log_epoch(self, record: dict[str, float]) -> None:
        """Metrics of one epoch (NaN values left out); ``finish`` logs the curves, once."""
        if self.tracker is None:
            return
        finite = {k: v for k, v in record.items() if k != "epoch" and not _nan(v)}
        self.tracker.log_metrics(finite, step=int(record["epoch"]))

    def log_pictures(self, paths: list[Path]) -> None:
        """Validation overlay pictures."""
        if self.tracker is None:
            return
        for path in paths:
            self.tracker.log_artifact(path, artifact_path=f"validation/{path.parent.name}")

    def finish(
        self,
        *,
        trained: TrainedNetwork,
        best_checkpoint: Path,
        history: list[dict],
        stopped_by: str,
    ) -> str | None:
        """Log curves, history and the best model with the agreement of its reduced precisions
        with fp32 (also as metrics ``precision_agreement_<precision>``); register it when a
        name is configured."""
        if self.tracker is None:
            return None
        from medseg.tracking.packaging import log_segmentation_model
        from medseg.tracking.registry import register_and_promote
        from medseg.train.checkpoint import load_checkpoint

        curves = save_curves(self.run_dir / "curves.png", history)
        self.tracker.log_artifact(curves, artifact_path="curves")
        write_json_atomic(self.run_dir / "history.json", history)
        self.tracker.log_artifact(self.run_dir / "history.json")
        self.tracker.set_tags({"stopped_by": stopped_by})
        load_checkpoint(best_checkpoint, network=trained.network)
        trained.network.eval()
        with tempfile.TemporaryDirectory(prefix="medseg-exports-") as folder:
            exports = self._exports(trained, Path(folder))
            if exports.agreement:
                metrics = {f"precision_agreement_{k}": v for k, v in exports.agreement.items()}
                self.tracker.log_metrics(metrics, step=0)
            channels = trained.arguments["in_channels"]
            example = np.zeros((1, channels, *trained.patch_size), np.float32)
            info = log_segmentation_model(
                trained.network.cpu(),
                factory=MODEL_FACTORY,
                factory_kwargs=trained.arguments,
                plan=self.plan.model_dump(mode="json")
                | {
                    "train_configuration": self.config.configuration,
                    "mirror_axes": trained.mirror_axes,
                },
                labels=self.plan.label_names,
                input_example=example,
                registered_model_name=self.config.registered_model_name,
                precision_agreement=exports.agreement,
                exports=exports.files,
            )
        version = getattr(info, "registered_model_version", None)
        if self.config.registered_model_name and version is not None:
            scores = [
                r["val_mean_dice"] for r in history if not _nan(r.get("val_mean_dice", math.nan))
            ]
            register_and_promote(
                version,
                name=self.config.registered_model_name,
                metric=max(scores, default=0.0),
                tracking_uri=self.tracker.tracking_uri,
            )
        self.tracker.end()
        return str(version) if version is not None else None

    def _exports(self, trained: TrainedNetwork, folder: Path) -> PackageExports:
        """The exports packaged with the model and their agreement with fp32. A failed export
        does not lose the trained model: it is packaged without exports (prediction then
        exports, or runs torch) and the failure is logged."""
        from medseg.infer.agreement import PackageExports, export_for_package

        try:
            return export_for_package(
                trained.network.cpu(),
                trained.validation_images,
                folder=folder,
                patch_size=trained.patch_size,
                in_channels=trained.arguments["in_channels"],
                num_classes=self.plan.num_outputs,
                overlap=self.config.validation.overlap,
                slice_axis=trained.slice_axis,
                activation=self.plan.activation,
                calibration_patches=trained.calibration_patches,
            )
        except BackendError as error:
            logger.warning("the model is packaged without exports: %s", error)
            return PackageExports()

    def close(self, *, failed: bool) -> None:
        """End the run (e.g. after an error) if ``finish`` did not."""
        if self.tracker is not None:
            self.tracker.end(failed=failed)


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _plan_params(plan: Plan) -> dict[str, Any]:
    return {
        "target_spacing": plan.target_spacing,
        "normalization": plan.normalization.scheme.value,
        "configurations": {k: c.model_dump() for k, c in plan.configurations.items()},
        "labels": plan.label_names,
        "digest": plan.digest(),
    }


def save_curves(path: Path, history: list[dict]) -> Path:
    """Training loss and validation Dice per epoch as a PNG."""
    figure = Figure(figsize=(9, 3.5))
    loss_axis, dice_axis = figure.subplots(1, 2)
    epochs = [r["epoch"] for r in history]
    loss_axis.plot(epochs, [r["train_loss"] for r in history], label="train loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.legend()
    for key in sorted({k for r in history for k in r if k.startswith("val_")}):
        points = [(r["epoch"], r[key]) for r in history if key in r and not _nan(r[key])]
        if points:
            dice_axis.plot(*zip(*points, strict=True), marker="o", label=key.removeprefix("val_"))
    dice_axis.set_xlabel("epoch")
    dice_axis.set_ylim(0, 1)
    if dice_axis.lines:
        dice_axis.legend(fontsize=7)
    else:
        dice_axis.text(0.5, 0.5, "no validation cases", ha="center", transform=dice_axis.transAxes)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=80, bbox_inches="tight")
    return path
