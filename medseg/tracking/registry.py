"""The model registry: pinning an alias to a version, registering a run's model, and the
``candidate``/``champion`` promotion rule (``register_and_promote``)."""

from __future__ import annotations

import enum
import logging
import math
import re
from dataclasses import dataclass

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from medseg import __version__
from medseg.errors import TrackingError
from medseg.tracking.client import activate
from medseg.tracking.packaging import MODEL_NAME_IN_RUN
from medseg.tracking.store import require_store_for_model
from medseg.tracking.tags import TAG_MEDSEG_VERSION

logger = logging.getLogger(__name__)


class Alias(enum.StrEnum):
    """Registry aliases that ``register_and_promote`` maintains."""

    CANDIDATE = "candidate"
    CHAMPION = "champion"


_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")


def pin_model_uri(model_uri: str, *, tracking_uri: str | None = None) -> str:
    """``models:/NAME@ALIAS`` as the version the alias points at now (``models:/NAME/7``);
    any other URI unchanged. Jobs pin once so every worker and scan uses one model even if
    the alias moves meanwhile.

    Raises:
        TrackingUnavailableError: a registry or run URI and a store that cannot be reached.
        TrackingError: the registered model or the alias does not exist.
    """
    require_store_for_model(model_uri, tracking_uri)
    match = _ALIAS_URI.match(model_uri)
    if match is None:
        return model_uri
    client = MlflowClient(tracking_uri=activate(tracking_uri))
    try:
        version = client.get_model_version_by_alias(match["name"], match["alias"])
    except MlflowException as error:
        raise TrackingError(f"{model_uri}: {error.message}") from error
    return f"models:/{match['name']}/{version.version}"


def register_run_model(run_id: str, *, name: str, tracking_uri: str | None = None) -> str:
    """Register the packaged model of run ``run_id`` under ``name``; return the new version.

    Raises:
        TrackingError: the run has no packaged medseg model.
    """
    client = MlflowClient(tracking_uri=activate(tracking_uri))
    try:
        run = client.get_run(run_id)
        models = client.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME_IN_RUN}'",
        )
        if not models:
            raise TrackingError(f"run {run_id}: no packaged {MODEL_NAME_IN_RUN!r} to register")
        version = mlflow.register_model(f"models:/{models[0].model_id}", name)
    except MlflowException as error:
        raise TrackingError(f"run {run_id}: cannot register its model: {error.message}") from error
    return str(version.version)


@dataclass(frozen=True)
class PromotionResult:
    """Outcome of ``register_and_promote`` for one model version."""

    name: str
    version: str
    metric: float
    promoted: bool
    champion_version: str
    previous_champion_version: str | None
    previous_champion_metric: float | None


def register_and_promote(
    model_version: str | int,
    *,
    name: str,
    metric: float,
    metric_name: str = "val_mean_dice",
    tracking_uri: str | None = None,
) -> PromotionResult:
    """Tag a registered version with its metric, make it ``candidate``, maybe ``champion``.

    Rule: every version passed here gets the alias ``candidate`` (so it names the latest one).
    ``champion`` moves to it only if there is no champion yet or if ``metric`` is strictly
    greater than the champion's metric, read from the champion's version tag ``metric_name``.
    A champion without that tag (set by hand) is kept, with a warning. Ties keep the old
    champion. The read-then-move is not atomic: run promotions of one model one at a time.

    Example:
        metrics 0.5, 0.4, 0.6, 0.6 for versions 1-4 leave ``champion`` at 1, 1, 3, 3 and
        ``candidate`` at 1, 2, 3, 4.

    Raises:
        TrackingError: ``metric`` is NaN or infinite.
    """
    metric = float(metric)
    if not math.isfinite(metric):
        raise TrackingError(f"{name} version {model_version}: {metric_name} is {metric}")
    client = MlflowClient(tracking_uri=activate(tracking_uri))
    version = str(model_version)
    client.set_model_version_tag(name, version, metric_name, repr(metric))
    client.set_model_version_tag(name, version, TAG_MEDSEG_VERSION, __version__)
    client.set_registered_model_alias(name, Alias.CANDIDATE, version)
    # A missing alias is an INVALID_PARAMETER_VALUE error over REST, so read the alias map.
    previous_version = client.get_registered_model(name).aliases.get(Alias.CHAMPION)
    champion = client.get_model_version(name, previous_version) if previous_version else None
    previous_metric = None
    if champion is not None and metric_name in champion.tags:
        previous_metric = float(champion.tags[metric_name])
    if champion is None:
        promoted = True
    elif previous_version == version:
        promoted = False
    elif previous_metric is None:
        logger.warning("%s champion v%s has no %s tag; kept", name, previous_version, metric_name)
        promoted = False
    else:
        promoted = metric > previous_metric
    if promoted:
        client.set_registered_model_alias(name, Alias.CHAMPION, version)
    return PromotionResult(
        name=name,
        version=version,
        metric=metric,
        promoted=promoted,
        champion_version=version if promoted else str(previous_version),
        previous_champion_version=previous_version,
        previous_champion_metric=previous_metric,
    )
