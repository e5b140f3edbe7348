"""Experiment tracking, model packaging and the registry: the only package that imports mlflow.

Where runs go (``store.tracking_uri``): an explicit URI, else ``MLFLOW_TRACKING_URI``, else an
embedded SQLite store ``<base>/mlruns/mlflow.db`` with artifacts in ``<base>/mlruns/artifacts``,
where ``<base>`` is ``$MEDSEG_HOME`` or, when that is unset, the current working directory.
Teams point ``MLFLOW_TRACKING_URI`` at a shared ``mlflow server`` instead.

Modules, one job each:

- ``store``: is the store usable? Checked in seconds before work starts (MLflow's own retries
  take minutes). Imports no mlflow, so commands call it before the slow import.
- ``ownership``: who owns a run, whether that process lives, the run files in a command's
  folder. No mlflow either.
- ``client``: the mlflow client pointed at a store, experiment and run look-up.
- ``tags``: standard tags, params flattening, refusal of path-like values. Nothing here logs
  file system paths: callers log hashes (``medseg.phi.hash_identifier``) and manifest
  digests instead, and the ``mlflow.source.name`` tag keeps only the script's name.
- ``runs``: ``RunTracker``, one run.
- ``stale``: ``mark_stale_runs``, for runs a killed process left RUNNING.
- ``packaging``: a trained model as a custom ``mlflow.pyfunc`` model (weights + plan + label
  map + how to rebuild the network), logged and loaded back as torch.
- ``registry``: alias pinning, registration, the promotion rule (``register_and_promote``).

Every entry point (``RunTracker``, ``load_segmentation_model``, ``register_and_promote``) takes
an optional ``tracking_uri`` resolved by ``store.tracking_uri()``; pass the same one to all of
them. This ``__init__`` imports nothing, so that ``medseg.tracking.store`` stays free of mlflow;
import from the module that owns a name.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Models packaged before the split carry a code file with
    # ``from medseg.tracking import SegmentationPyfuncModel``: they must still load.
    if name == "SegmentationPyfuncModel":
        from medseg.tracking.packaging import SegmentationPyfuncModel

        return SegmentationPyfuncModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
