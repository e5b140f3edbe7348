"""A trained model packaged as a custom ``mlflow.pyfunc`` model, and loaded back as torch.

The package holds weights + plan + label map + how to rebuild the network; not the ``pt2``
format, which freezes the spatial shape that sliding-window inference needs to vary.

Two layouts load the same way, as a ``LoadedModel`` with one or more members:

- one network (``log_segmentation_model``): ``weights.pt``, ``model.json``, ``plan.json``
  (holding the network's ``train_configuration`` and ``mirror_axes``), ``labels.json``, and
  when it was exported at packaging its exports (``export_onnx``: the fp32 ONNX graph;
  ``export_int8``: a folder with the int8 OpenVINO IR), which prediction runs instead of
  exporting again;
- an ensemble (``medseg.tracking.ensemble``): ``plan.json`` (the plan the members share),
  ``labels.json``, ``ensemble.json`` (one entry per member: its configuration, mirror axes,
  where it came from and the names of its ``member_<i>_weights.pt``/``member_<i>_model.json``
  artifacts) and optionally ``postprocessing.json``.
"""

from __future__ import annotations

import importlib
import json
import pickle
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models.model import MLMODEL_FILE_NAME, Model, ModelInfo
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import TensorSpec

from medseg import __version__
from medseg.errors import ConfigError, TrackingError
from medseg.infer.backends import EXPORT_INT8, EXPORT_ONNX
from medseg.infer.quantize import INT8_NETWORK
from medseg.infer.serving import SERVING_METADATA, serving_metadata, serving_signature
from medseg.infer.sliding_window import ACTIVATIONS
from medseg.tracking.client import activate
from medseg.tracking.store import require_store_for_model

MODEL_NAME_IN_RUN = "model"
PRECISION_AGREEMENT = "precision_agreement"
"""``MLmodel`` metadata key: argmax agreement with fp32 per reduced precision."""
EXPORT_ARTIFACTS = {EXPORT_ONNX: "export_onnx", EXPORT_INT8: "export_int8"}
"""Artifact name of each export a one-network package may carry (the int8 one is a folder)."""
MEMBER_PLAN_KEYS = ("train_configuration", "mirror_axes")
"""Plan keys that belong to one network, not to the plan the members of an ensemble share."""


@dataclass(frozen=True)
class LoadedMember:
    """One network of a packaged model, in eval mode, with what it needs to be applied."""

    network: torch.nn.Module
    model_info: dict[str, Any]  # factory, factory_kwargs, network class
    configuration: str  # the plan configuration it was trained on ("2d", "3d")
    mirror_axes: list[int] | None  # axes training mirrored (None: all)
    origin: dict[str, Any] = field(default_factory=dict)  # source URI, run id (ensembles)
    # exports stored with the package, by key (medseg.infer.backends.EXPORT_ONNX, EXPORT_INT8)
    exports: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedModel:
    """A packaged segmentation model: its members (one network, or an ensemble's networks)
    plus the plan, labels and post-processing they share."""

    members: tuple[LoadedMember, ...]
    plan: dict[str, Any]  # without the per-member keys (MEMBER_PLAN_KEYS)
    labels: dict[int, str]
    postprocessing: dict[str, Any] | None = None
    ensemble: dict[str, Any] | None = None  # ensemble.json; None for a one-network package
    # argmax agreement with fp32 per reduced precision, measured at export ({"bf16": 0.9997})
    precision_agreement: dict[str, float] = field(default_factory=dict)

    @property
    def network(self) -> torch.nn.Module:
        """The network of a one-network package.

        Raises:
            TrackingError: the package is an ensemble of several networks.
        """
        return self._only_member().network

    @property
    def model_info(self) -> dict[str, Any]:
        """``model.json`` of a one-network package (raises like ``network``)."""
        return self._only_member().model_info

    def _only_member(self) -> LoadedMember:
        if len(self.members) != 1:
            raise TrackingError(
                f"this model is an ensemble of {len(self.members)} networks, not one network"
            )
        return self.members[0]


def build_network(factory: str, factory_kwargs: Mapping[str, Any]) -> torch.nn.Module:
    """Call the factory ``"package.module:function"`` with ``factory_kwargs``.

    Raises:
        TrackingError: the factory is malformed, cannot be imported, or does not return a
            ``torch.nn.Module``.
    """
    module_name, _, attribute = factory.partition(":")
    if not module_name or not attribute:
        raise TrackingError(f"network factory {factory!r} is not of the form 'module:function'")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as error:
        raise TrackingError(f"network factory {factory!r} cannot be imported: {error}") from error
    network = target(**factory_kwargs)
    if not isinstance(network, torch.nn.Module):
        raise TrackingError(f"network factory {factory!r} returned {type(network).__name__}")
    return network


def _probabilities(network: torch.nn.Module, array: np.ndarray, activation: str) -> np.ndarray:
    first_parameter = next(network.parameters(), None)
    device = first_parameter.device if first_parameter is not None else torch.device("cpu")
    batch = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)
    with torch.inference_mode():
        logits = network(batch)
        if isinstance(logits, list | tuple):  # deep supervision: full resolution comes first
            logits = logits[0]
        return ACTIVATIONS[activation](logits.float()).cpu().numpy()


def plan_activation(plan: Mapping[str, Any]) -> str:
    """``"sigmoid"`` for a region-based plan (one probability per region), else ``"softmax"``."""
    return "sigmoid" if plan.get("regions") else "softmax"


def _member_probabilities(
    member: LoadedMember, plan: Mapping[str, Any], array: np.ndarray
) -> np.ndarray:
    """Softmax of one member; a 2D member given ``(B, C, X, Y, Z)`` runs slice by slice along
    its configuration's ``slice_axis``."""
    configuration = plan.get("configurations", {}).get(member.configuration, {})
    slice_axis = configuration.get("slice_axis")
    if array.ndim != 5 or slice_axis is None:
        return _probabilities(member.network, array, plan_activation(plan))
    moved = np.moveaxis(array, slice_axis + 2, 1)  # (B, S, C, *plane)
    slices = moved.reshape(-1, *moved.shape[2:])
    probabilities = _probabilities(member.network, slices, plan_activation(plan))
    restored = probabilities.reshape(*moved.shape[:2], *probabilities.shape[1:])
    return np.moveaxis(restored, 1, slice_axis + 2)


def _stored_exports(artifacts: Mapping[str, str]) -> dict[str, Path]:
    """The exports of a one-network package, by key, from its artifact paths."""
    exports = {
        key: Path(artifacts[name]) for key, name in EXPORT_ARTIFACTS.items() if name in artifacts
    }
    if EXPORT_INT8 in exports:
        exports[EXPORT_INT8] /= INT8_NETWORK
    return exports


def _packaged_agreement(plan_artifact: Path) -> dict[str, float]:
    """The stored precision agreement, from the ``MLmodel`` beside ``artifacts/plan.json``."""
    mlmodel = plan_artifact.parent.parent / MLMODEL_FILE_NAME
    return _stored_agreement(Model.load(mlmodel)) if mlmodel.is_file() else {}


def _read_json(path: str) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _load_member(model_path: str, weights_path: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    model_info = _read_json(model_path)
    network = build_network(model_info["factory"], model_info["factory_kwargs"])
    network.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return network.to(device).eval(), model_info


class SegmentationPyfuncModel(PythonModel):
    """MLflow pyfunc wrapper: preprocessed (B, C, *spatial) float32 -> softmax (B, K, *spatial),
    or with a region-based plan one sigmoid per region (B, R, *spatial).

    Artifacts of one network: ``weights`` (state_dict), ``plan`` (preprocessing plan), ``model``
    (factory and kwargs that rebuild the network; the factory's package must be importable
    where the model is loaded), ``labels`` (channel index -> structure name). An ensemble has
    ``ensemble`` instead of ``weights``/``model``, naming each member's artifacts, and
    ``postprocessing`` when one was given; its ``predict`` is the mean of the members' softmax.
    """

    def load_context(self, context: PythonModelContext) -> None:
        """Rebuild the networks from their factories, load their weights, read the metadata."""
        paths = context.artifacts
        plan, labels = _read_json(paths["plan"]), _read_json(paths["labels"])
        ensemble = _read_json(paths["ensemble"]) if "ensemble" in paths else None
        postprocessing = _read_json(paths["postprocessing"]) if "postprocessing" in paths else None
        if ensemble is None:  # one network: its configuration and mirror axes are in the plan
            entries = [
                {
                    "model": "model",
                    "weights": "weights",
                    "configuration": plan.get("train_configuration", "3d"),
                    "mirror_axes": plan.get("mirror_axes"),
                }
            ]
        else:
            entries = ensemble["members"]
        members = []
        for entry in entries:
            network, model_info = _load_member(paths[entry["model"]], paths[entry["weights"]])
            origin = {k: v for k, v in entry.items() if k not in ("model", "weights")}
            members.append(
                LoadedMember(
                    network,
                    model_info,
                    configuration=entry["configuration"],
                    mirror_axes=entry["mirror_axes"],
                    origin=origin if ensemble is not None else {},
                    exports=_stored_exports(paths) if ensemble is None else {},
                )
            )
        self.loaded = LoadedModel(
            members=tuple(members),
            plan={k: v for k, v in plan.items() if k not in MEMBER_PLAN_KEYS},
            labels={int(index): name for index, name in labels.items()},
            postprocessing=postprocessing,
            ensemble=ensemble,
            precision_agreement=_packaged_agreement(Path(paths["plan"])),
        )
        self.packaged: Any = None

    def predict(
        self,
        context: PythonModelContext,
        model_input: np.ndarray,  # or a scan request's DataFrame: MLflow warns on a Union hint
        params: dict[str, Any] | None = None,
    ) -> Any:
        """A tensor request: softmax probabilities (the mean over the members), float32, same
        batch and spatial shape as ``model_input``. A scan request (rows with ``nifti_base64``
        or ``path``): a DataFrame with each scan's label map and volumes
        (``medseg.infer.serving``).

        Raises:
            TrackingError: a tensor that is not ``(B, C, *spatial)``.
            ConfigError: a scan request with bad ``params`` or a row without a scan.
        """
        from medseg.infer.serving import predict_scans, scan_records

        records = scan_records(model_input)
        if records is not None:
            try:
                return predict_scans(self._packaged_model(), records, params)
            except ConfigError as error:  # the server answers 400 with the message
                raise MlflowException.invalid_parameter_value(str(error)) from error
        array = np.asarray(model_input, dtype=np.float32)
        if array.ndim < 3:
            raise TrackingError(f"model input must be (B, C, *spatial), got shape {array.shape}")
        members = self.loaded.members
        total = _member_probabilities(members[0], self.loaded.plan, array)
        for member in members[1:]:
            total += _member_probabilities(member, self.loaded.plan, array)
        return total / len(members)

    def _packaged_model(self) -> Any:
        """The package as ``medseg predict`` runs it (built once)."""
        from medseg.infer.predictor import packaged_model

        if self.packaged is None:
            self.packaged = packaged_model(self.loaded, source="served model")
        return self.packaged

    def unwrap(self) -> LoadedModel:
        """The torch networks and metadata, for sliding-window inference outside pyfunc."""
        return self.loaded


_MODEL_CODE = """from mlflow.models import set_model

from medseg.tracking.packaging import SegmentationPyfuncModel

set_model(SegmentationPyfuncModel())
"""


def _bare_network(network: torch.nn.Module) -> torch.nn.Module:
    """The module under DistributedDataParallel/DataParallel and ``torch.compile`` wrappers."""
    for attribute in ("module", "_orig_mod"):
        inner = getattr(network, attribute, None)
        if isinstance(inner, torch.nn.Module):
            network = inner
    return network


def _evaluate_example(
    network: torch.nn.Module, input_example: np.ndarray, plan: Mapping[str, Any]
) -> np.ndarray:
    was_training = network.training
    network.eval()
    try:
        return _probabilities(network, input_example, plan_activation(plan))
    finally:
        network.train(was_training)


def log_segmentation_model(
    network: torch.nn.Module,
    *,
    factory: str,
    factory_kwargs: Mapping[str, Any],
    plan: Mapping[str, Any],
    labels: Mapping[int, str],
    input_example: np.ndarray,
    registered_model_name: str | None = None,
    precision_agreement: Mapping[str, float] | None = None,
    exports: Mapping[str, Path] | None = None,
) -> ModelInfo:
    """Log ``network`` as the pyfunc model ``model`` of the active run; register it if named.

    ``precision_agreement`` (argmax agreement with fp32 per reduced precision, measured on the
    validation cases: ``medseg.infer.agreement``) is stored in the ``MLmodel`` metadata, where
    ``--precision`` finds it; ``exports`` (``medseg.infer.agreement.export_for_package``) are
    stored beside the weights (the int8 network with its folder). Before logging, the network
    is rebuilt from ``factory`` and loaded with the weights, so a package that could not be
    loaded later fails now. The package answers tensor and scan requests
    (``medseg.infer.serving``); ``input_example`` only fixes the tensors' channels and is not
    stored. Pip requirements are pinned from the running versions so nothing is resolved or
    downloaded.

    Returns:
        MLflow's ``ModelInfo``; ``registered_model_version`` is set when a name was given.

    Raises:
        TrackingError: no active run, factory/weights mismatch, or labels not 0..K-1.
    """
    if mlflow.active_run() is None:
        raise TrackingError("no active MLflow run: start one with RunTracker.start()")
    network = _bare_network(network)
    state = {
        key: value.detach().cpu() if isinstance(value, torch.Tensor) else value
        for key, value in network.state_dict().items()
    }
    try:
        build_network(factory, factory_kwargs).load_state_dict(state)
    except RuntimeError as error:
        raise TrackingError(f"factory {factory!r} builds a different network: {error}") from error
    probabilities = _evaluate_example(network, input_example, plan)
    n_channels = probabilities.shape[1]
    regions = plan.get("regions")
    if regions and len(regions) != n_channels:
        raise TrackingError(f"the network has {n_channels} outputs for {len(regions)} regions")
    if not regions and sorted(labels) != list(range(n_channels)):
        raise TrackingError(f"labels {sorted(labels)} must be the channels 0..{n_channels - 1}")
    io = serving_metadata(
        in_channels=input_example.shape[1],
        num_classes=n_channels,
        spatial_dims=probabilities.ndim - 2,
    )
    model_info = {
        "factory": factory,
        "factory_kwargs": dict(factory_kwargs),
        "network_class": type(network).__qualname__,
        "medseg_version": __version__,
        "output": (
            "sigmoid probabilities per region (B, R, *spatial)"
            if plan.get("regions")
            else "softmax probabilities (B, K, *spatial)"
        ),
    }
    with tempfile.TemporaryDirectory(prefix="medseg-model-") as folder:
        torch.save(state, Path(folder) / "weights.pt")
        stored = {
            EXPORT_ARTIFACTS[key]: path.parent if key == EXPORT_INT8 else path
            for key, path in (exports or {}).items()
        }
        artifacts = (
            {"weights": Path(folder) / "weights.pt"}
            | stored
            | write_json_artifacts(
                Path(folder),
                {
                    "plan": dict(plan),
                    "model": model_info,
                    "labels": {str(index): name for index, name in labels.items()},
                },
            )
        )
        return log_package(
            artifacts,
            folder=Path(folder),
            io=io,
            registered_model_name=registered_model_name,
            precision_agreement=precision_agreement,
        )


def write_json_artifacts(folder: Path, payloads: Mapping[str, Any]) -> dict[str, Path]:
    """Write each payload as ``folder/<key>.json``; return the artifact paths by key.

    Raises:
        TrackingError: a payload is not JSON-serializable (names the file).
    """
    paths = {}
    for key, payload in payloads.items():
        paths[key] = folder / f"{key}.json"
        try:
            paths[key].write_text(json.dumps(payload, indent=2), encoding="utf-8")
        except TypeError as error:
            raise TrackingError(f"{key}.json: not JSON-serializable: {error}") from error
    return paths


def log_package(
    artifacts: Mapping[str, Path],
    *,
    folder: Path,
    io: Mapping[str, Any],
    registered_model_name: str | None,
    precision_agreement: Mapping[str, float] | None = None,
) -> ModelInfo:
    """Log ``artifacts`` as the pyfunc model ``model`` of the active run (code in ``folder``),
    with its request formats (``io``: ``medseg.infer.serving.serving_metadata``) and
    ``precision_agreement`` in its metadata.

    Pip requirements are pinned from the running versions so nothing is resolved or downloaded.
    """
    # Models from code: the model file is a reference to this class, not a pickle.
    code = folder / "segmentation_model.py"
    code.write_text(_MODEL_CODE, encoding="utf-8")
    with warnings.catch_warnings():
        # The example is left out on purpose: stored as JSON, a volume would be huge.
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME_IN_RUN,
            python_model=str(code),
            artifacts={key: str(path) for key, path in artifacts.items()},
            signature=serving_signature(),
            pip_requirements=[
                f"mlflow=={mlflow.__version__}",
                f"torch=={torch.__version__.split('+')[0]}",
                f"numpy=={np.__version__}",
            ],
            registered_model_name=registered_model_name,
            metadata={"medseg_version": __version__}
            | dict(io)
            | ({PRECISION_AGREEMENT: dict(precision_agreement)} if precision_agreement else {}),
        )


# What loading a missing, incomplete or corrupt model package raises (MLmodel YAML, JSON
# files, weights, factory); anything else is a bug and keeps its traceback.
_UNLOADABLE_MODEL = (
    MlflowException,
    OSError,
    ValueError,
    KeyError,
    RuntimeError,
    pickle.UnpicklingError,
    yaml.YAMLError,
)


def _cannot_load(model_uri: str, error: Exception) -> TrackingError:
    problem = (
        error.message
        if isinstance(error, MlflowException)
        else f"{type(error).__name__}: {' '.join(str(error).split())}"
    )
    return TrackingError(f"{model_uri}: cannot load the model: {problem}")


def _mlmodel(model_uri: str, tracking_uri: str | None) -> Model:
    """The ``MLmodel`` file of a package (its networks stay unloaded)."""
    require_store_for_model(model_uri, tracking_uri)
    activate(tracking_uri)
    try:
        return Model.load(model_uri)
    except _UNLOADABLE_MODEL as error:
        raise _cannot_load(model_uri, error) from error


def stored_precision_agreement(
    model_uri: str, *, tracking_uri: str | None = None
) -> dict[str, float]:
    """The argmax agreement with fp32 per reduced precision stored with a packaged model
    (empty when none was measured), read from its ``MLmodel`` file alone.

    Raises:
        TrackingUnavailableError: a registry or run URI and a store that cannot be reached.
        TrackingError: no such model.
    """
    return _stored_agreement(_mlmodel(model_uri, tracking_uri))


def _stored_agreement(mlmodel: Model) -> dict[str, float]:
    stored = (mlmodel.metadata or {}).get(PRECISION_AGREEMENT, {})
    return {str(precision): float(value) for precision, value in stored.items()}


def model_input_channels(model_uri: str, *, tracking_uri: str | None = None) -> int:
    """The input channels of a packaged model, read from its ``MLmodel`` file alone (its
    networks stay unloaded): the serving metadata, or the tensor signature of a model
    registered before scan requests existed.

    Raises:
        TrackingUnavailableError: a registry or run URI and a store that cannot be reached.
        TrackingError: no such model, or its ``MLmodel`` says nothing of its input.
    """
    mlmodel = _mlmodel(model_uri, tracking_uri)
    serving = (mlmodel.metadata or {}).get(SERVING_METADATA)
    if serving is not None:
        return int(serving["in_channels"])
    signature = mlmodel.signature
    inputs = signature.inputs.inputs if signature is not None and signature.inputs else []
    if len(inputs) != 1 or not isinstance(inputs[0], TensorSpec) or len(inputs[0].shape) < 3:
        raise TrackingError(f"{model_uri}: not a medseg segmentation model (input signature)")
    return int(inputs[0].shape[1])


def load_segmentation_model(model_uri: str, *, tracking_uri: str | None = None) -> LoadedModel:
    """Load a packaged model (``models:/NAME@champion``, ``runs:/ID/model``) as torch + metadata.

    The network is in eval mode, on CUDA when available, else CPU.

    Raises:
        TrackingUnavailableError: a registry or run URI and a store that cannot be reached.
        TrackingError: no such model, or its package is incomplete or corrupt (names the URI).
    """
    require_store_for_model(model_uri, tracking_uri)
    activate(tracking_uri)
    try:
        pyfunc_model = mlflow.pyfunc.load_model(model_uri)
        python_model = pyfunc_model.unwrap_python_model()
    except _UNLOADABLE_MODEL as error:
        raise _cannot_load(model_uri, error) from error
    if not isinstance(python_model, SegmentationPyfuncModel):
        raise TrackingError(f"{model_uri}: not a medseg segmentation model")
    return python_model.unwrap()  # load_context read the stored agreement from the MLmodel
