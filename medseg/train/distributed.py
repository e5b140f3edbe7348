"""Device choice and DistributedDataParallel under ``torchrun`` (CUDA: NCCL, CPU: gloo)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """This process' place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, validates and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed() -> DistributedContext:
    """Read torchrun's environment, pick the device and join the process group if needed."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank, world_size, local_rank, device)


def teardown_distributed() -> None:
    """Leave the process group (no-op outside torchrun)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    """Wait for every rank (no-op for one process)."""
    if context.distributed:
        dist.barrier()


def broadcast_flag(flag: bool, context: DistributedContext) -> bool:
    """Rank 0's value of ``flag`` on every rank (e.g. 'time budget reached')."""
    if not context.distributed:
        return flag
    tensor = torch.tensor(
        [int(flag)], device=context.device if context.device.type == "cuda" else "cpu"
    )
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


def any_rank(flag: bool, context: DistributedContext) -> bool:
    """True on every rank when ``flag`` is True on any rank (e.g. 'a stop signal arrived')."""
    if not context.distributed:
        return flag
    tensor = torch.tensor(
        [int(flag)], device=context.device if context.device.type == "cuda" else "cpu"
    )
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def gather_objects(value: object, context: DistributedContext) -> list[object]:
    """``value`` from every rank, in rank order (``[value]`` for one process)."""
    if not context.distributed:
        return [value]
    gathered: list[object] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered
