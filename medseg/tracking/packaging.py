"""A trained model packaged as a custom ``mlflow.pyfunc`` model, and loaded back as torch.

The package holds weights + plan + label map + how to rebuild the network; not the ``pt2``
format, which freezes the spatial shape that sliding-window inference needs to vary.
"""

from __future__ import annotations

import importlib
import json
import pickle
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import Schema, TensorSpec

from medseg import __version__
from medseg.errors import TrackingError
from medseg.tracking.client import activate
from medseg.tracking.store import require_store_for_model

MODEL_NAME_IN_RUN = "model"


@dataclass(frozen=True)
class LoadedModel:
    """A packaged segmentation model: network in eval mode plus the metadata it travels with."""

    network: torch.nn.Module
    plan: dict[str, Any]
    labels: dict[int, str]
    model_info: dict[str, Any]


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


def _softmax_probabilities(network: torch.nn.Module, array: np.ndarray) -> np.ndarray:
    first_parameter = next(network.parameters(), None)
    device = first_parameter.device if first_parameter is not None else torch.device("cpu")
    batch = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)
    with torch.inference_mode():
        logits = network(batch)
        if isinstance(logits, list | tuple):  # deep supervision: full resolution comes first
            logits = logits[0]
        return torch.softmax(logits.float(), dim=1).cpu().numpy()


class SegmentationPyfuncModel(PythonModel):
    """MLflow pyfunc wrapper: preprocessed (B, C, *spatial) float32 -> softmax (B, K, *spatial).

    Artifacts: ``weights`` (state_dict), ``plan`` (preprocessing plan), ``model`` (factory and
    kwargs that rebuild the network; the factory's package must be importable where the model
    is loaded), ``labels`` (channel index -> structure name).
    """

    def load_context(self, context: PythonModelContext) -> None:
        """Rebuild the network from its factory, load its weights, read plan and labels."""
        paths = context.artifacts
        self.model_info = json.loads(Path(paths["model"]).read_text(encoding="utf-8"))
        self.plan = json.loads(Path(paths["plan"]).read_text(encoding="utf-8"))
        labels = json.loads(Path(paths["labels"]).read_text(encoding="utf-8"))
        self.labels = {int(index): name for index, name in labels.items()}
        network = build_network(self.model_info["factory"], self.model_info["factory_kwargs"])
        state = torch.load(paths["weights"], map_location="cpu", weights_only=True)
        network.load_state_dict(state)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.network = network.to(device).eval()

    def predict(
        self,
        context: PythonModelContext,
        model_input: np.ndarray,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        """Softmax probabilities, float32, same batch and spatial shape as ``model_input``.

        Raises:
            TrackingError: ``model_input`` is not ``(B, C, *spatial)``.
        """
        array = np.asarray(model_input)
        if array.ndim < 3:
            raise TrackingError(f"model input must be (B, C, *spatial), got shape {array.shape}")
        return _softmax_probabilities(self.network, array)

    def unwrap(self) -> LoadedModel:
        """The torch network and metadata, for sliding-window inference outside pyfunc."""
        return LoadedModel(self.network, self.plan, self.labels, self.model_info)


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


def _evaluate_example(network: torch.nn.Module, input_example: np.ndarray) -> np.ndarray:
    was_training = network.training
    network.eval()
    try:
        return _softmax_probabilities(network, input_example)
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
) -> ModelInfo:
    """Log ``network`` as the pyfunc model ``model`` of the active run; register it if named.

    Before logging, the network is rebuilt from ``factory`` and loaded with the weights, so a
    package that could not be loaded later fails now. The signature has variable batch and
    spatial dims; ``input_example`` only fixes channels and dtype and is not stored. Pip
    requirements are pinned from the running versions so nothing is resolved or downloaded.

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
    probabilities = _evaluate_example(network, input_example)
    n_channels = probabilities.shape[1]
    if sorted(labels) != list(range(n_channels)):
        raise TrackingError(f"labels {sorted(labels)} must be the channels 0..{n_channels - 1}")
    spatial = (-1,) * (probabilities.ndim - 2)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, input_example.shape[1], *spatial))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_channels, *spatial))]),
    )
    model_info = {
        "factory": factory,
        "factory_kwargs": dict(factory_kwargs),
        "network_class": type(network).__qualname__,
        "medseg_version": __version__,
        "output": "softmax probabilities (B, K, *spatial)",
    }
    with tempfile.TemporaryDirectory(prefix="medseg-model-") as folder:
        artifacts = {
            "weights": Path(folder) / "weights.pt",
            "plan": Path(folder) / "plan.json",
            "model": Path(folder) / "model.json",
            "labels": Path(folder) / "labels.json",
        }
        torch.save(state, artifacts["weights"])
        # Models from code: the model file is a reference to this class, not a pickle.
        code = Path(folder) / "segmentation_model.py"
        code.write_text(_MODEL_CODE, encoding="utf-8")
        try:
            for key, payload in (
                ("plan", dict(plan)),
                ("model", model_info),
                ("labels", {str(index): name for index, name in labels.items()}),
            ):
                artifacts[key].write_text(json.dumps(payload, indent=2), encoding="utf-8")
        except TypeError as error:
            raise TrackingError(f"{key}.json: not JSON-serializable: {error}") from error
        with warnings.catch_warnings():
            # The example is left out on purpose: stored as JSON, a volume would be huge.
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            return mlflow.pyfunc.log_model(
                name=MODEL_NAME_IN_RUN,
                python_model=str(code),
                artifacts={key: str(path) for key, path in artifacts.items()},
                signature=signature,
                pip_requirements=[
                    f"mlflow=={mlflow.__version__}",
                    f"torch=={torch.__version__.split('+')[0]}",
                    f"numpy=={np.__version__}",
                ],
                registered_model_name=registered_model_name,
                metadata={"medseg_version": __version__},
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
        python_model = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    except _UNLOADABLE_MODEL as error:
        problem = (
            error.message
            if isinstance(error, MlflowException)
            else f"{type(error).__name__}: {' '.join(str(error).split())}"
        )
        raise TrackingError(f"{model_uri}: cannot load the model: {problem}") from error
    if not isinstance(python_model, SegmentationPyfuncModel):
        raise TrackingError(f"{model_uri}: not a medseg segmentation model")
    return python_model.unwrap()
