"""Training batches from the preprocessing cache, produced in DataLoader worker processes.

Each worker memory-maps the cache and runs its own seeded ``BatchSampler`` (seed from the
run's seed, the DDP rank, the worker index and the step the run resumes at), so workers and
replicas draw different batches and a resumed run does not replay the batches it has seen.
Workers are tied to the training process (``medseg.lifeline``): they end with it, even when it
is killed with SIGKILL.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from medseg.lifeline import tie_to_parent
from medseg.preprocess.cache import load_cache
from medseg.train.sampling import BatchSampler, SampleSource


@dataclass(frozen=True)
class BatchSpec:
    """What batches to draw."""

    patch_size: tuple[int, ...]
    batch_size: int
    foreground_fraction: float
    slice_axis: int | None
    with_weights: bool


def training_sources(
    cache_dir: Path, case_ids: list[str], *, with_weights: bool
) -> list[SampleSource]:
    """The cached cases as the batch sampler reads them (their border weights only when the
    loss uses them)."""
    sources = []
    for case in load_cache(cache_dir, case_ids):
        source = SampleSource.from_cached_case(case)
        if not with_weights:
            source.weights = None
        sources.append(source)
    return sources


class CacheBatches(IterableDataset):
    """An endless stream of training batches (dicts of tensors) from cached cases."""

    def __init__(
        self, cache_dir: Path, case_ids: list[str], *, spec: BatchSpec, seed: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.cache_dir = Path(cache_dir)
        self.case_ids = case_ids
        self.spec = spec
        self.seed = seed

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker = get_worker_info()
        worker_id = worker.id if worker is not None else 0
        seed = int(np.random.SeedSequence([*self.seed, worker_id]).generate_state(1)[0])
        sampler = BatchSampler(
            training_sources(self.cache_dir, self.case_ids, with_weights=self.spec.with_weights),
            patch_size=self.spec.patch_size,
            batch_size=self.spec.batch_size,
            foreground_fraction=self.spec.foreground_fraction,
            slice_axis=self.spec.slice_axis,
            seed=seed,
        )
        while True:
            batch = sampler.next_batch()
            item = {
                "image": torch.from_numpy(batch.image),
                "label": torch.from_numpy(batch.label.astype(np.int64)),
            }
            if batch.weights is not None:
                item["weights"] = torch.from_numpy(batch.weights)
            yield item


def make_loader(
    cache_dir: Path,
    case_ids: list[str],
    *,
    spec: BatchSpec,
    seed: tuple[int, ...],
    num_workers: int,
    pin_memory: bool,
) -> Iterator[dict[str, torch.Tensor]]:
    """An iterator over training batches, built in ``num_workers`` processes (0: in-process)."""
    loader = DataLoader(
        CacheBatches(cache_dir, case_ids, spec=spec, seed=seed),
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=2 if num_workers > 0 else None,
        worker_init_fn=functools.partial(_start_worker, parent_pid=os.getpid()),
    )
    return iter(loader)


def _start_worker(worker_id: int, *, parent_pid: int) -> None:
    tie_to_parent(parent_pid)
