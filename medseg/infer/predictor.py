"""Predict one scan with a packaged model: preprocess with the model's plan, sliding window of
each member network (one, or the members of an ensemble) and the mean of their probabilities,
optional dense CRF on the preprocessed grid, probabilities back onto the scan's grid, argmax,
optional post-processing. A region-based model (``medseg.regions``) averages sigmoids per
region instead, and each region's probability, resampled onto the scan's grid, is thresholded
at 0.5 there and painted in ``regions_class_order``; the CRF is refused for it.

The model always travels with its plan (spacing, normalization, patch) and label names, so
nothing is guessed here.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from pydantic import ValidationError

from medseg.errors import ConfigError, ScanChannelsError
from medseg.infer.cascade import (
    CASCADE_MARGIN_MM,
    Box,
    box_fraction,
    box_onto_grid,
    grown_box,
    paste,
    tight_box,
    where_structures_win,
)
from medseg.infer.confidence import argmax_and_max, normalised_entropy, structure_confidence
from medseg.infer.crf import dense_crf
from medseg.infer.options import PredictionOptions
from medseg.infer.postprocess import PostprocessingRules, apply_rules, keep_largest_component
from medseg.infer.probability_store import ClassProbabilities
from medseg.infer.sliding_window import probability_slabs
from medseg.preprocess.case import (
    ClassMaps,
    ClassMapSink,
    preprocess_case,
    restore_argmax,
    restore_map,
    restore_regions,
)
from medseg.preprocess.plan import Configuration, Plan
from medseg.volume import Volume

if TYPE_CHECKING:
    from medseg.tracking.packaging import LoadedModel

logger = logging.getLogger(__name__)


@dataclass
class ModelMember:
    """One network of a packaged model, with the plan configuration and mirror axes it was
    trained with."""

    network: torch.nn.Module
    configuration: str  # "2d" or "3d": a key of the plan's configurations
    mirror_axes: list[int] | None = None  # axes training mirrored (None: all)
    info: dict = field(default_factory=dict)  # model.json: factory, factory_kwargs...
    origin: dict = field(default_factory=dict)  # an ensemble member's source URI and run id
    # exports stored with the package (medseg.infer.backends.EXPORT_ONNX, EXPORT_INT8)
    exports: dict[str, Path] = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        """Input channels the network takes (one image per channel)."""
        return int(self.info.get("factory_kwargs", {}).get("in_channels", 1))


@dataclass
class PackagedModel:
    """Trained networks (one, or the members of an ensemble) with everything needed to apply
    them: the plan and label names they share, and the post-processing stored with them.

    The plan's ``target_spacing`` is that of the members' configurations when they share one
    (a low-resolution configuration has its own: ``Plan.for_configuration``); members at
    different spacings are predicted apart (``for_prediction``), not together.

    Raises:
        ConfigError: no member, members that take different input channels, or invalid
            stored post-processing rules.
    """

    members: list[ModelMember]
    plan: Plan
    label_names: dict[int, str]
    source: str = ""
    postprocessing: dict | None = None  # postprocessing.json of an ensemble package
    # argmax agreement with fp32 per reduced precision, measured at export ({"bf16": 0.9997})
    precision_agreement: dict[str, float] = field(default_factory=dict)
    # the low-resolution members kept beside the full-resolution ones (for_prediction): they
    # find the box of --structures first (medseg.infer.cascade)
    coarse: PackagedModel | None = None
    rules: PostprocessingRules = field(init=False)  # its "rules", parsed when the model loads
    spacings: list[str] = field(init=False)  # of the members' configurations

    def __post_init__(self) -> None:
        where = self.source or "model"
        if not self.members:
            raise ConfigError(f"{where}: a model needs at least one network")
        channels = sorted({member.in_channels for member in self.members})
        if len(channels) > 1:
            raise ConfigError(f"{where}: members take different input channels {channels}")
        self.rules = _stored_rules(self.postprocessing, where=where)
        spacings = {
            str(self.plan.for_configuration(m.configuration).target_spacing) for m in self.members
        }
        if len(spacings) == 1:
            self.plan = self.plan.for_configuration(self.members[0].configuration)
        self.spacings = sorted(spacings)

    def for_prediction(self, *, fast: bool) -> PackagedModel:
        """The members ``predict`` runs: with ``fast`` the low-resolution ones
        (``predict --fast``); else the others, so a model that carries a low-resolution
        configuration beside its full-resolution one predicts at full resolution, with the
        low-resolution members as its ``coarse`` model for the ``--structures`` cascade (a
        model of only low-resolution members runs them).

        Raises:
            ConfigError: ``fast`` and the model has no low-resolution configuration.
        """
        lowres = set(self.plan.low_resolution)
        coarse = [m for m in self.members if m.configuration in lowres]
        if fast and not coarse:
            raise ConfigError(
                f"--fast: model {self.source or 'model'} has no low-resolution configuration"
            )
        full = [m for m in self.members if m.configuration not in lowres]
        if not coarse or not full:
            return self
        if fast:
            return self._of_members(coarse)
        return self._of_members(full, coarse=self._of_members(coarse))

    def _of_members(
        self, members: list[ModelMember], *, coarse: PackagedModel | None = None
    ) -> PackagedModel:
        return PackagedModel(
            members=members,
            plan=self.plan,
            label_names=self.label_names,
            source=self.source,
            postprocessing=self.postprocessing,
            coarse=coarse,
        )

    def members_to_run(self, options: PredictionOptions) -> list[ModelMember]:
        """The members ``predict_scan`` takes predictors for, in order: the model's, then with
        ``--structures`` the low-resolution ones of its cascade."""
        if self.coarse is None or not options.selected_structures(self.label_names):
            return list(self.members)
        return [*self.members, *self.coarse.members]

    @classmethod
    def of_network(
        cls,
        network: torch.nn.Module,
        *,
        plan: Plan,
        configuration: str,
        label_names: dict[int, str],
        mirror_axes: list[int] | None = None,
    ) -> PackagedModel:
        """A model of one network (an ensemble of one)."""
        member = ModelMember(network=network, configuration=configuration, mirror_axes=mirror_axes)
        return cls(members=[member], plan=plan, label_names=label_names)

    @property
    def num_classes(self) -> int:
        """Label values a prediction may hold (background included)."""
        return max(self.label_names) + 1

    @property
    def in_channels(self) -> int:
        """Input channels the networks take (one image per channel)."""
        return self.members[0].in_channels

    @property
    def description(self) -> str:
        """``one network (3d)`` or ``an ensemble of 5 members (3d, 3d, 3d, 2d, 2d)``, then the
        post-processing it carries, if any."""
        configurations = ", ".join(member.configuration for member in self.members)
        if len(self.members) == 1:
            networks = f"one network ({configurations})"
        else:
            networks = f"an ensemble of {len(self.members)} members ({configurations})"
        rules = self.rules.active()
        if not rules:
            return networks
        steps = ", ".join(
            f"{self.label_names.get(value, value)} "
            + (
                "keep largest"
                if rule.keep_largest
                else f"remove components < {rule.min_component_mm3:.1f} mm³"
            )
            for value, rule in sorted(rules.items())
        )
        return f"{networks}; post-processing from the model: {steps}"


def _stored_rules(postprocessing: dict | None, *, where: str) -> PostprocessingRules:
    """The ``rules`` of a model's ``postprocessing.json`` (none: no rule).

    Raises:
        ConfigError: the stored rules are not valid.
    """
    stored = (postprocessing or {}).get("rules")
    if stored is None:
        return PostprocessingRules()
    try:
        return PostprocessingRules.model_validate(stored)
    except ValidationError as error:
        problem = " ".join(str(error).split())
        raise ConfigError(f"{where}: postprocessing.json: {problem}") from error


def load_packaged_model(uri: str, *, tracking_uri: str | None = None) -> PackagedModel:
    """Load ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/...`` or a model folder.

    Raises:
        TrackingUnavailableError: a registry or run URI and a store that cannot be reached.
        TrackingError: no such model, or its package is incomplete or corrupt.
    """
    from medseg.tracking.packaging import load_segmentation_model

    model = packaged_model(load_segmentation_model(uri, tracking_uri=tracking_uri), source=uri)
    logger.info("%s: %s", uri, model.description)
    return model


def packaged_model(loaded: LoadedModel, *, source: str) -> PackagedModel:
    """The ``PackagedModel`` of a loaded package (``medseg.tracking.packaging``)."""
    members = [
        ModelMember(
            network=member.network.eval(),
            configuration=member.configuration,
            mirror_axes=list(member.mirror_axes) if member.mirror_axes is not None else None,
            info=dict(member.model_info),
            origin=dict(member.origin),
            exports=dict(member.exports),
        )
        for member in loaded.members
    ]
    return PackagedModel(
        members=members,
        plan=Plan.model_validate(loaded.plan),
        label_names={int(k): v for k, v in loaded.labels.items()},
        source=source,
        postprocessing=loaded.postprocessing,
        precision_agreement=loaded.precision_agreement,
    )


def predict_scan(
    volume: Volume,
    model: PackagedModel,
    *,
    options: PredictionOptions,
    predictors: Sequence[torch.nn.Module] | None = None,
    case_id: str = "scan",
    on_windows: Callable[[int], None] | None = None,
    probabilities_out: ClassMapSink | None = None,
    uncertainty_out: list[Volume] | None = None,
) -> Volume:
    """Label map of ``volume`` on its own grid (same shape and affine).

    The class probabilities are the mean over the model's members (``ensemble_probabilities``)
    on the preprocessed grid, before any CRF, resampling and argmax. With ``options.crf``,
    they are refined by a dense CRF on the preprocessed grid (with the normalised image and the
    plan's target spacing) before they go back onto the scan; when every member is 2D, the CRF
    is one 3D CRF over the volume, or a 2D CRF per slice along their slice axis with
    ``crf.per_slice``. With ``probabilities_out`` (a list, or a ``ProbabilityWriter`` that
    streams them to disk), each class probability map resampled onto the scan's (closest-RAS)
    grid is appended to it as float16 ``(X, Y, Z)``, in class order, one at a time.

    With ``uncertainty_out``, the voxel-wise normalised entropy of the class probabilities
    (:func:`medseg.infer.confidence.normalised_entropy`) on the scan's grid is appended to it.

    The label map's ``metadata["confidence"]`` holds each structure's confidence scores
    (:mod:`medseg.infer.confidence`; not for a region-based model).

    With ``options.structures``, the label map holds only those structures, voxel for voxel
    as without it, and only the part of the scan where they can win is resampled (every
    network still runs on the whole scan: the argmax needs every class). A model with a
    ``coarse`` model runs the cascade instead (``_predict_in_box``): its full-resolution
    networks run only on the box where the low-resolution ones found the structures;
    ``predictors`` then follow ``model.members_to_run(options)``.

    Raises:
        ScanChannelsError: the scan has another number of channels (4th axis) than the model.
        UnknownChoiceError: ``options.structures`` names a structure the model lacks.
        ValueError: ``options.structures`` with ``probabilities_out``.
        ConfigError: members at different spacings (see ``PackagedModel.for_prediction``);
            ``uncertainty_out`` with a region-based model or the ``--structures`` cascade.
    """
    check_channels(volume, model, where=case_id)
    selected = options.selected_structures(model.label_names)
    if uncertainty_out is not None and (model.plan.region_set or (selected and model.coarse)):
        raise ConfigError(
            f"{model.source or 'model'}: the uncertainty map needs every class's softmax over "
            "the whole scan: not with a region-based model, nor with --structures' cascade"
        )
    if selected and model.coarse is not None:
        return _predict_in_box(
            volume,
            model,
            selected,
            options=options,
            predictors=predictors,
            case_id=case_id,
            on_windows=on_windows,
        )
    if len(model.spacings) > 1:
        raise ConfigError(
            f"{model.source or 'model'}: members at different spacings {model.spacings} cannot "
            "be averaged yet; predict with --fast for the low-resolution ones"
        )
    regions = model.plan.region_set
    if regions is not None and options.crf is not None:
        raise ConfigError(
            f"{model.source or 'model'}: the dense CRF refines softmax classes; this model "
            "predicts overlapping regions (sigmoid per region): predict without --crf"
        )
    case = preprocess_case(volume, None, model.plan, case_id=case_id)
    image = torch.from_numpy(case.image)
    with member_probabilities(
        model, image, options=options, predictors=predictors, on_windows=on_windows
    ) as probabilities:
        maps: ClassMaps = probabilities
        if options.crf is not None:
            slice_axes = {
                model.plan.configurations[m.configuration].slice_axis for m in model.members
            }
            maps = dense_crf(
                probabilities.tensor(),
                image,
                spacing_mm=model.plan.target_spacing,
                settings=options.crf,
                slice_axis=slice_axes.pop() if len(slice_axes) == 1 else None,
            ).numpy()
        if regions is not None:
            order = regions.regions_class_order
            labels = restore_regions(
                maps, case.properties, regions_class_order=order, keep=probabilities_out
            )
            if selected:
                labels = labels.with_array(
                    np.where(np.isin(labels.array, list(selected)), labels.array, 0)
                )
        else:
            classes = list(selected) if selected else None
            named = selected or {v: name for v, name in model.label_names.items() if v > 0}
            confidence = structure_confidence(*argmax_and_max(maps), named)
            if uncertainty_out is not None:
                entropy = normalised_entropy(maps)
                uncertainty_out.append(restore_map(entropy, case.properties))
            labels = restore_argmax(maps, case.properties, keep=probabilities_out, classes=classes)
    if kept := options.kept_structures(model.label_names):
        labels = labels.with_array(keep_largest_component(labels.array, kept))
    if options.model_postprocessing and model.rules.active():
        voxel_mm3 = float(np.prod(labels.spacing_mm))
        labels = labels.with_array(apply_rules(labels.array, model.rules, voxel_mm3=voxel_mm3))
    labels.metadata = {"case_id": case_id, "model": model.source}
    if regions is None:
        labels.metadata["confidence"] = confidence
    return labels


def _predict_in_box(
    volume: Volume,
    model: PackagedModel,
    selected: dict[int, str],
    *,
    options: PredictionOptions,
    predictors: Sequence[torch.nn.Module] | None,
    case_id: str,
    on_windows: Callable[[int], None] | None,
) -> Volume:
    """The ``--structures`` cascade: ``model``'s networks run only on the box where
    ``model.coarse`` found the structures (:func:`cascade_box`); the whole scan when it found
    none of them, so a structure the coarse pass missed is still looked for; background outside
    the box."""
    assert model.coarse is not None
    count = len(model.members)
    box = cascade_box(
        volume,
        model.coarse,
        selected,
        options=options,
        predictors=None if predictors is None else predictors[count:],
        case_id=case_id,
        on_windows=on_windows,
    )
    full = replace(model, coarse=None)
    run = functools.partial(
        predict_scan,
        model=full,
        options=options,
        predictors=None if predictors is None else predictors[:count],
        case_id=case_id,
        on_windows=on_windows,
    )
    if box is None:
        logger.warning(
            "%s: the low-resolution networks found none of %s: the full-resolution ones run "
            "on the whole scan",
            case_id,
            ", ".join(selected.values()),
        )
        return run(volume)
    logger.info(
        "%s: cascade: the full-resolution networks run on %.0f%% of the scan",
        case_id,
        100 * box_fraction(box, volume.shape),
    )
    return paste(run(volume.crop(box)), volume, box)


def cascade_box(
    volume: Volume,
    coarse: PackagedModel,
    selected: Collection[int],
    *,
    options: PredictionOptions,
    predictors: Sequence[torch.nn.Module] | None = None,
    case_id: str,
    on_windows: Callable[[int], None] | None = None,
) -> Box | None:
    """The box of ``volume``'s voxels where ``coarse``'s networks put the ``selected``
    structures, grown by ``CASCADE_MARGIN_MM``; None when they found none.

    The structures are found on the networks' own grid (argmax, or region thresholds), and only
    that box goes onto the scan's voxels: no class probability is resampled onto the scan.
    """
    case = preprocess_case(volume, None, coarse.plan, case_id=case_id)
    regions = coarse.plan.region_set
    with member_probabilities(
        coarse,
        torch.from_numpy(case.image),
        options=options,
        predictors=predictors,
        on_windows=on_windows,
    ) as probabilities:
        present = where_structures_win(
            probabilities,
            selected,
            regions_class_order=None if regions is None else regions.regions_class_order,
        )
    box = tight_box(present)
    if box is None:
        return None
    on_scan = box_onto_grid(box, np.array(case.properties.resampled_affine), volume)
    return grown_box(on_scan, volume, margin_mm=CASCADE_MARGIN_MM)


def ensemble_probabilities(
    model: PackagedModel,
    image: torch.Tensor,
    *,
    options: PredictionOptions,
    predictors: Sequence[torch.nn.Module] | None = None,
    on_windows: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Mean softmax ``(K, X, Y, Z)`` of the model's members over a preprocessed ``image`` (with
    a region-based plan: mean sigmoid per region, ``(R, X, Y, Z)``), all classes at once: see
    :func:`member_probabilities`.

    Raises:
        ConfigError: ``predictors`` does not hold one module per member.
    """
    with member_probabilities(
        model, image, options=options, predictors=predictors, on_windows=on_windows
    ) as probabilities:
        return probabilities.tensor()


def member_probabilities(
    model: PackagedModel,
    image: torch.Tensor,
    *,
    options: PredictionOptions,
    predictors: Sequence[torch.nn.Module] | None = None,
    on_windows: Callable[[int], None] | None = None,
    in_memory_limit: int | None = None,
) -> ClassProbabilities:
    """The model's members' mean probabilities over a preprocessed ``image``, to be read one
    class at a time (close it, or use it as a context manager).

    Each member runs the same sliding window and mirroring (over its own mirror axes) with its
    own configuration's patch and slice axis; ``predictors`` (from ``scan_predictor``, one per
    member; default the members' networks) may be exported backends. Each member's
    probabilities are added slab by slab as its windows finish (along the slice axis of its 2D
    members, else the last axis) into one store, in memory up to ``in_memory_limit`` bytes and
    in a temporary file beyond: memory holds one row of windows' running means (float16 when
    large: :func:`accumulator_dtype`), whatever the number of members, classes and slices (see
    :mod:`medseg.infer.probability_store`).

    Raises:
        ConfigError: ``predictors`` does not hold one module per member.
    """
    networks = [m.network for m in model.members] if predictors is None else list(predictors)
    if len(networks) != len(model.members):
        raise ConfigError(
            f"{model.source or 'model'}: {len(networks)} predictors for "
            f"{len(model.members)} members"
        )
    configurations = [model.plan.configurations[m.configuration] for m in model.members]
    slice_axes = {c.slice_axis for c in configurations if c.slice_axis is not None}
    axis = slice_axes.pop() if len(slice_axes) == 1 else 2
    grid = tuple(image.shape[1:])
    probabilities = ClassProbabilities(
        model.plan.num_outputs, grid, axis=axis, in_memory_limit=in_memory_limit
    )
    accumulator = accumulator_dtype(model.plan.num_outputs, grid, axis, configurations)
    try:
        with torch.inference_mode():
            for member, network, configuration in zip(
                model.members, networks, configurations, strict=True
            ):
                slabs = probability_slabs(
                    network,
                    image,
                    patch_size=configuration.patch_size,
                    num_classes=model.plan.num_outputs,
                    overlap=options.overlap,
                    batch_size=options.batch_size,
                    mirror=options.mirror,
                    mirror_axes=member.mirror_axes,
                    slice_axis=configuration.slice_axis,
                    on_windows=on_windows,
                    activation=model.plan.activation,
                    axis=axis,
                    accumulator_dtype=accumulator,
                )
                for start, slab in slabs:
                    probabilities.add(start, slab)
                probabilities.end_member()
    except BaseException:
        probabilities.close()
        raise
    return probabilities


ACCUMULATOR_FLOAT32_LIMIT_BYTES = 256 * 2**20
"""Sliding-window running means (one row of windows, all classes) up to this size are float32;
larger ones float16 (their probabilities differ by about 1e-3, the argmax almost never)."""


def accumulator_dtype(
    classes: int, grid: Sequence[int], axis: int, configurations: Sequence[Configuration]
) -> torch.dtype:
    """float32 sliding-window running means, or float16 when the largest member's would exceed
    :data:`ACCUMULATOR_FLOAT32_LIMIT_BYTES` (e.g. 118 classes over a 273 x 273 cross-section)."""
    cross_section = math.prod(grid) // grid[axis]
    depth = max(c.patch_size[axis] if c.slice_axis is None else 1 for c in configurations)
    too_large = 4 * classes * cross_section * depth > ACCUMULATOR_FLOAT32_LIMIT_BYTES
    return torch.float16 if too_large else torch.float32


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
