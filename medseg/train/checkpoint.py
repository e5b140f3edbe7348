"""Training checkpoints: everything needed to continue a run exactly where it stopped."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medseg.io.atomic import atomic_path


@dataclass
class TrainingState:
    """Where a run is: counters, best validation score so far, the MLflow run id."""

    epoch: int = 0
    step: int = 0
    best_metric: float = float("-inf")
    run_id: str | None = None
    elapsed_seconds: float = 0.0


def save_checkpoint(
    path: Path,
    *,
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: TrainingState,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically (a kill mid-write leaves the previous one intact)."""
    payload = {
        "network": network.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "state": vars(state),
        "torch_rng": torch.get_rng_state(),
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(
    path: Path,
    *,
    network: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[TrainingState, dict[str, Any]]:
    """Restore network (and optimizer/scaler when given) from ``path``; return state and extra."""
    payload = torch.load(path, map_location="cpu", weights_only=False)
    network.load_state_dict(payload["network"])
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])
    if scaler is not None:
        scaler.load_state_dict(payload["scaler"])
    torch.set_rng_state(payload["torch_rng"])
    return TrainingState(**payload["state"]), payload["extra"]
