"""A small packaged model (random 3D U-Net weights on the tiny phantom dataset's plan) logged to
an MLflow store, for tests that predict: builds in about a second on a CPU."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from mlflow.models.model import ModelInfo

from medseg.infer.agreement import export_for_package
from medseg.models import build_network, network_arguments
from medseg.preprocess.plan import Plan
from medseg.tracking.packaging import log_segmentation_model
from medseg.tracking.runs import RunTracker


@dataclass(frozen=True)
class TinyUnet:
    """A logged tiny U-Net: the in-memory network, MLflow's model info and the run id."""

    network: torch.nn.Module
    info: ModelInfo
    run_id: str


def log_tiny_unet(
    plan: Plan,
    tracking_uri: str,
    *,
    experiment: str = "predict-test",
    run_name: str = "m",
    registered_model_name: str | None = None,
    seed: int = 0,
    in_channels: int = 1,
    base_filters: int = 4,
) -> TinyUnet:
    """Log a U-Net (``base_filters``, random weights of ``seed``, ``in_channels`` input
    channels) for ``plan``'s labels in a new run, with its ONNX export as training packages it
    (no agreement: there are no validation cases); register it under ``registered_model_name``
    when given."""
    torch.manual_seed(seed)
    arguments = network_arguments(
        architecture="unet",
        in_channels=in_channels,
        num_classes=max(plan.label_names) + 1,
        configuration=plan.configurations["3d"].model_dump(),
        base_filters=base_filters,
    )
    network = build_network(**arguments).eval()
    with (
        RunTracker(tracking_uri).start(experiment=experiment, run_name=run_name, tags={}) as run,
        tempfile.TemporaryDirectory() as folder,
    ):
        exports = export_for_package(
            network,
            [],
            folder=Path(folder),
            patch_size=plan.configurations["3d"].patch_size,
            in_channels=in_channels,
            num_classes=arguments["num_classes"],
        )
        info = log_segmentation_model(
            network,
            factory="medseg.models:build_network",
            factory_kwargs=arguments,
            plan=plan.model_dump(mode="json") | {"train_configuration": "3d"},
            labels=plan.label_names,
            input_example=np.zeros((1, in_channels, 32, 32, 32), np.float32),
            registered_model_name=registered_model_name,
            exports=exports.files,
        )
    return TinyUnet(network, info, run.run_id)


def build_packaged_model(plan: Plan, folder: Path) -> tuple[str, str]:
    """The tiny U-Net logged into a SQLite store ``folder/mlflow.db``.

    Returns:
        ``(model_uri, tracking_uri)``; load with ``load_packaged_model(uri, tracking_uri=...)``.
    """
    tracking_uri = f"sqlite:///{folder}/mlflow.db"
    return log_tiny_unet(plan, tracking_uri).info.model_uri, tracking_uri
