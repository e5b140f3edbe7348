"""Ensembles: several packaged models (folds, 2D and 3D configurations) as ONE model package.

``log_ensemble_model`` loads the members (``runs:/...``, ``models:/NAME@ALIAS``,
``models:/NAME/VERSION`` or a model folder; an alias is pinned to its version first), refuses
members that do not share one plan, one label map and one number of input channels, and logs
one pyfunc package (the layout is described in ``medseg.tracking.packaging``) whose prediction
is the mean of the members' softmax probabilities. A member that is itself an ensemble adds
each of its networks: every network weighs the same. ``register_ensemble`` does it in an MLflow
run of its own (members logged as params and tags), registers the package and sets an alias.

Example:
    >>> registered = register_ensemble(
    ...     ["models:/hippocampus-fold0@champion", "models:/hippocampus-fold1@champion"],
    ...     name="hippocampus-ensemble",
    ...     alias="champion",
    ... )
    >>> registered.model_uri
    'models:/hippocampus-ensemble/1'
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient

from medseg import __version__
from medseg.errors import ConfigError, TrackingError
from medseg.infer.serving import serving_metadata
from medseg.tracking.client import activate
from medseg.tracking.packaging import (
    LoadedModel,
    load_segmentation_model,
    log_package,
    write_json_artifacts,
)
from medseg.tracking.registry import pin_model_uri
from medseg.tracking.runs import RunTracker

MIN_MEMBERS = 2
ENSEMBLE_FORMAT = 1
"""Version of the ``ensemble.json`` layout."""

_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
_RUN_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)/")


@dataclass(frozen=True)
class LoggedEnsemble:
    """A logged ensemble package: MLflow's model info and one ``ensemble.json`` entry per
    network (``source``, ``model_uri``, ``run_id``, ``configuration``, ``mirror_axes``)."""

    info: ModelInfo
    members: list[dict[str, Any]]


@dataclass(frozen=True)
class RegisteredEnsemble:
    """A registered ensemble: ``models:/NAME/VERSION``, its run and its networks."""

    name: str
    version: str
    model_uri: str
    run_id: str
    members: list[dict[str, Any]]


def log_ensemble_model(
    member_uris: Sequence[str],
    *,
    tracking_uri: str | None = None,
    postprocessing: Mapping[str, Any] | None = None,
    registered_model_name: str | None = None,
) -> LoggedEnsemble:
    """Log the members of ``member_uris`` as one pyfunc model ``model`` of the active run.

    ``postprocessing`` is stored as ``postprocessing.json`` and exposed by the loaded model.

    Raises:
        ConfigError: fewer than two members, a member given twice, or members whose plans,
            label names or input channels differ (naming both members and the difference).
        TrackingError: no active run, or a member cannot be loaded (names its URI).
        TrackingUnavailableError: a registry or run URI and a store that cannot be reached.
    """
    if mlflow.active_run() is None:
        raise TrackingError("no active MLflow run: start one with RunTracker.start()")
    members = load_members(member_uris, tracking_uri=tracking_uri)
    return _log_members(
        members,
        tracking_uri=tracking_uri,
        postprocessing=postprocessing,
        registered_model_name=registered_model_name,
    )


@dataclass(frozen=True)
class MemberModel:
    """A member model as given, pinned and loaded."""

    source: str  # as given
    model_uri: str  # pinned to a version
    model: LoadedModel


def load_members(member_uris: Sequence[str], *, tracking_uri: str | None) -> list[MemberModel]:
    """Load the member models (aliases pinned to versions) and check they can be ensembled.

    Raises:
        ConfigError, TrackingError, TrackingUnavailableError: as ``log_ensemble_model``.
    """
    if len(member_uris) < MIN_MEMBERS:
        raise ConfigError(
            f"ensemble: needs at least {MIN_MEMBERS} member models, got {len(member_uris)}"
        )
    pinned = [pin_model_uri(uri, tracking_uri=tracking_uri) for uri in member_uris]
    for index, uri in enumerate(pinned):
        if uri in pinned[:index]:
            raise ConfigError(f"ensemble: member {member_uris[index]} is given twice ({uri})")
    members = [
        MemberModel(source, uri, load_segmentation_model(uri, tracking_uri=tracking_uri))
        for source, uri in zip(member_uris, pinned, strict=True)
    ]
    for member in members[1:]:
        check_same_plan(members[0].source, members[0].model, member.source, member.model)
    return members


def _log_members(
    members: Sequence[MemberModel],
    *,
    tracking_uri: str | None,
    postprocessing: Mapping[str, Any] | None,
    registered_model_name: str | None,
) -> LoggedEnsemble:
    """Log checked members as one package in the active run."""
    first = members[0].model
    entries: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="medseg-ensemble-") as temporary:
        folder = Path(temporary)
        artifacts: dict[str, Path] = {}
        for loaded in members:
            for member in loaded.model.members:
                key = f"member_{len(entries)}"
                torch.save(
                    {k: v.detach().cpu() for k, v in member.network.state_dict().items()},
                    folder / f"{key}_weights.pt",
                )
                artifacts[f"{key}_weights"] = folder / f"{key}_weights.pt"
                artifacts |= write_json_artifacts(folder, {f"{key}_model": member.model_info})
                entries.append(
                    {
                        "source": loaded.source,
                        "model_uri": loaded.model_uri,
                        "run_id": _run_id(loaded.model_uri, tracking_uri),
                        **({"via": member.origin} if member.origin else {}),
                        "configuration": member.configuration,
                        "mirror_axes": member.mirror_axes,
                        "weights": f"{key}_weights",
                        "model": f"{key}_model",
                    }
                )
        payloads: dict[str, Any] = {
            "plan": first.plan,
            "labels": {str(index): name for index, name in first.labels.items()},
            "ensemble": {
                "format": ENSEMBLE_FORMAT,
                "medseg_version": __version__,
                "members": entries,
            },
        }
        if postprocessing is not None:
            payloads["postprocessing"] = dict(postprocessing)
        artifacts |= write_json_artifacts(folder, payloads)
        info = log_package(
            artifacts,
            folder=folder,
            io=serving_metadata(
                in_channels=_in_channels(first),
                num_classes=len(first.plan.get("regions") or first.labels),  # one per region
                spatial_dims=3,
            ),
            registered_model_name=registered_model_name,
        )
    return LoggedEnsemble(info, entries)


def register_ensemble(
    member_uris: Sequence[str],
    *,
    name: str,
    alias: str | None = None,
    tracking_uri: str | None = None,
    postprocessing: Mapping[str, Any] | None = None,
    experiment: str = "ensembles",
    parent_run_id: str | None = None,
) -> RegisteredEnsemble:
    """Log the ensemble of ``member_uris`` in a new run of ``experiment``, register it as a new
    version of ``name`` and point ``alias`` at it.

    The run logs ``ensemble.members`` (the number of networks) and, per network,
    ``ensemble.member_<i>.source``/``configuration``/``run_id`` as params, and tags
    ``medseg.ensemble.member_<i>`` with the member URIs. ``parent_run_id`` nests the run under
    that run (active in this thread: ``medseg select``'s).

    Raises:
        ConfigError, TrackingError, TrackingUnavailableError: as ``log_ensemble_model``;
            TrackingError also when the registry refuses the name or alias.
    """
    members = load_members(member_uris, tracking_uri=tracking_uri)  # refused before any run
    tags = {f"medseg.ensemble.member_{i}": uri for i, uri in enumerate(member_uris)}
    with RunTracker(tracking_uri).start(
        experiment=experiment,
        run_name=f"ensemble-{name}",
        tags=tags,
        parent_run_id=parent_run_id,
    ) as run:
        logged = _log_members(
            members,
            tracking_uri=tracking_uri,
            postprocessing=postprocessing,
            registered_model_name=name,
        )
        run.log_params(
            {
                "ensemble": {
                    "members": len(logged.members),
                    **{
                        f"member_{i}": {
                            key: entry[key] for key in ("source", "configuration", "run_id")
                        }
                        for i, entry in enumerate(logged.members)
                    },
                }
            }
        )
    version = str(logged.info.registered_model_version)
    if alias is not None:
        client = MlflowClient(tracking_uri=activate(tracking_uri))
        try:
            client.set_registered_model_alias(name, alias, version)
        except MlflowException as error:
            raise TrackingError(
                f"{name} version {version}: alias {alias!r}: {error.message}"
            ) from error
    assert run.run_id is not None  # a started tracker has a run id
    return RegisteredEnsemble(
        name=name,
        version=version,
        model_uri=f"models:/{name}/{version}",
        run_id=run.run_id,
        members=logged.members,
    )


def check_same_plan(first_uri: str, first: LoadedModel, other_uri: str, other: LoadedModel) -> None:
    """Refuse two members that differ in label names, plan or input channels.

    Raises:
        ConfigError: ``ensemble: members A and B have different ...: <key> ...``.
    """
    where = f"ensemble: members {first_uri} and {other_uri}"
    if first.labels != other.labels:
        raise ConfigError(f"{where} have different label names: {first.labels} vs {other.labels}")
    difference = _first_difference(first.plan, other.plan)
    if difference is not None:
        key, left, right = difference
        raise ConfigError(f"{where} have different plans: {key!r} is {left!r} vs {right!r}")
    if _in_channels(first) != _in_channels(other):
        raise ConfigError(
            f"{where} take different input channels: {_in_channels(first)} vs {_in_channels(other)}"
        )


def _first_difference(left: Any, right: Any, key: str = "") -> tuple[str, Any, Any] | None:
    """The first dotted key where two JSON values differ, with both values (None if equal)."""
    if isinstance(left, dict) and isinstance(right, dict):
        for name in sorted(set(left) | set(right), key=str):
            found = _first_difference(
                left.get(name, "<missing>"),
                right.get(name, "<missing>"),
                f"{key}.{name}" if key else str(name),
            )
            if found is not None:
                return found
        return None
    return None if left == right else (key, left, right)


def _in_channels(model: LoadedModel) -> int:
    """Input channels of a model's networks (1 when the factory does not say); the networks of
    an ensemble were checked to agree when it was made."""
    return int(model.members[0].model_info.get("factory_kwargs", {}).get("in_channels", 1))


def _run_id(model_uri: str, tracking_uri: str | None) -> str | None:
    """The run that logged ``model_uri`` (a pinned registry or run URI), None for a folder."""
    if (match := _RUN_URI.match(model_uri)) is not None:
        return match["run_id"]
    if (match := _VERSION_URI.match(model_uri)) is not None:
        client = MlflowClient(tracking_uri=activate(tracking_uri))
        try:
            return client.get_model_version(match["name"], match["version"]).run_id
        except MlflowException as error:
            raise TrackingError(f"{model_uri}: {error.message}") from error
    return None
