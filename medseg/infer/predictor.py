"""Predict one scan with a packaged model: preprocess with the model's plan, sliding window,
optional dense CRF on the preprocessed grid, probabilities back onto the scan's grid, argmax,
optional post-processing.

The model always travels with its plan (spacing, normalization, patch) and label names, so
nothing is guessed here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medseg.errors import ScanChannelsError
from medseg.infer.crf import dense_crf
from medseg.infer.options import PredictionOptions
from medseg.infer.postprocess import keep_largest_component
from medseg.infer.sliding_window import predict_probabilities
from medseg.preprocess.case import preprocess_case, restore_argmax
from medseg.preprocess.plan import Plan
from medseg.volume import Volume


@dataclass
class PackagedModel:
    """A trained network with everything needed to apply it."""

    network: torch.nn.Module
    plan: Plan
    configuration: str
    label_names: dict[int, str]
    mirror_axes: list[int] | None = None  # axes training mirrored (None: all)
    source: str = ""
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return max(self.label_names) + 1

    @property
    def in_channels(self) -> int:
        """Input channels the network takes (one image per channel)."""
        return int(self.info.get("factory_kwargs", {}).get("in_channels", 1))


def load_packaged_model(uri: str, *, tracking_uri: str | None = None) -> PackagedModel:
    """Load ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/...`` or a model folder."""
    from medseg.tracking.packaging import load_segmentation_model

    loaded = load_segmentation_model(uri, tracking_uri=tracking_uri)
    plan_fields = dict(loaded.plan)
    configuration = plan_fields.pop("train_configuration", "3d")
    mirror_axes = plan_fields.pop("mirror_axes", None)
    return PackagedModel(
        network=loaded.network.eval(),
        plan=Plan.model_validate(plan_fields),
        configuration=configuration,
        label_names={int(k): v for k, v in loaded.labels.items()},
        mirror_axes=list(mirror_axes) if mirror_axes is not None else None,
        source=uri,
        info=dict(loaded.model_info),
    )


def predict_scan(
    volume: Volume,
    model: PackagedModel,
    *,
    options: PredictionOptions,
    predictor: torch.nn.Module | None = None,
    case_id: str = "scan",
    on_windows: Callable[[int], None] | None = None,
    probabilities_out: list[np.ndarray] | None = None,
) -> Volume:
    """Label map of ``volume`` on its own grid (same shape and affine).

    With ``options.crf``, the sliding-window probabilities are refined by a dense CRF on the
    preprocessed grid (with the normalised image and the plan's target spacing) before they go
    back onto the scan; a 2D configuration gets one 3D CRF over the volume, or a 2D CRF per
    slice along its slice axis with ``crf.per_slice``. When ``probabilities_out`` is a list,
    the class probabilities resampled onto the scan's (closest-RAS) grid are appended to it as
    float16 ``(K, X, Y, Z)``.

    Raises:
        ScanChannelsError: the scan has another number of channels (4th axis) than the model.
    """
    check_channels(volume, model, where=case_id)
    case = preprocess_case(volume, None, model.plan, case_id=case_id)
    configuration = model.plan.configurations[model.configuration]
    image = torch.from_numpy(case.image)
    with torch.inference_mode():
        probabilities = predict_probabilities(
            predictor or model.network,
            image,
            patch_size=configuration.patch_size,
            num_classes=model.num_classes,
            overlap=options.overlap,
            batch_size=options.batch_size,
            mirror=options.mirror,
            mirror_axes=model.mirror_axes,
            slice_axis=configuration.slice_axis,
            on_windows=on_windows,
        )
    if options.crf is not None:
        probabilities = dense_crf(
            probabilities,
            image,
            spacing_mm=model.plan.target_spacing,
            settings=options.crf,
            slice_axis=configuration.slice_axis,
        )
    labels = restore_argmax(probabilities.numpy(), case.properties, keep=probabilities_out)
    if kept := options.kept_structures(model.label_names):
        labels = labels.with_array(keep_largest_component(labels.array, kept))
    labels.metadata = {"case_id": case_id, "model": model.source}
    return labels


def check_channels(volume: Volume, model: PackagedModel, *, where: str) -> None:
    """Refuse a scan whose channels (1 for 3D, the 4th axis for 4D) are not the model's.

    Raises:
        ScanChannelsError: naming the scan's shape and the model's input channels.
    """
    channels = int(np.prod(volume.shape[3:], dtype=int))
    if channels != model.in_channels:
        shape = "x".join(str(n) for n in volume.shape)
        axis = " along its 4th axis" if volume.array.ndim > 3 else ""
        raise ScanChannelsError(
            where,
            f"the scan has shape {shape} ({_count(channels, 'channel')}{axis}), but the model "
            f"takes {_count(model.in_channels, 'input channel')}",
        )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def model_cache_folder(out_dir: Path) -> Path:
    """Where exported inference backends are cached between runs."""
    return Path(out_dir) / ".model_cache"
