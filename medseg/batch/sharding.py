"""Split one batch across cluster jobs: shard ``I/N`` keeps the scans whose key hashes to ``I``.

A scan's shard is ``int(sha256(key)) % N`` where the key is the scan's own identity (see
``medseg.batch.scans``), so it depends on nothing else in the tree: scans arriving in a hospital
inbox while an array job runs never move other scans between shards, every scan has exactly one
shard, and the shards of one ``N`` cover everything.

Where ``I/N`` comes from when ``--shard`` is not given (``shard_from_environment``):

* Slurm job arrays: ``SLURM_ARRAY_TASK_ID`` and ``SLURM_ARRAY_TASK_COUNT``. Arrays need not
  start at 0 (``--array=1-8``) nor step by 1 (``--array=0-14:2``), so the index is
  ``(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) // SLURM_ARRAY_TASK_STEP`` (MIN 0 and STEP 1
  when unset). Arrays given as lists (``--array=1,4,9``) cannot be numbered this way: pass
  ``--shard`` explicitly.
* Kubernetes Indexed Jobs: ``JOB_COMPLETION_INDEX``. Kubernetes does not export the number of
  completions to the pod, so the manifest must set ``MEDSEG_SHARD_COUNT`` to ``.spec.completions``
  (an ``env`` entry with the same number).
* neither: ``0/1`` (the whole batch).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from medseg.errors import ShardError

SHARD_COUNT_VARIABLE = "MEDSEG_SHARD_COUNT"


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ShardError(f"shard count must be at least 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ShardError(
                f"shard index must be in 0..{self.count - 1} (0-based), got {self.index}"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"I/N"`` -> ``Shard(I, N)``.

        Example:
            >>> Shard.parse("2/5")
            Shard(index=2, count=5)

        Raises:
            ShardError: ``text`` is not of the form ``I/N`` with ``0 <= I < N``.
        """
        index, slash, count = text.strip().partition("/")
        try:
            if not slash:
                raise ValueError(text)
            return cls(int(index), int(count))
        except ValueError:
            raise ShardError(f"shard must look like I/N (e.g. 0/4), got {text!r}") from None

    def owns(self, key: str) -> bool:
        """Whether the scan with identity ``key`` belongs to this shard."""
        return shard_of(key, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(key: str, count: int) -> int:
    """The shard (0..count-1) of a scan key: SHA-256 of the key (UTF-8) modulo ``count``."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % count


def _integer(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = env.get(name)
    if value is None or value.strip() == "":
        if default is None:
            raise ShardError(f"environment variable {name} is not set")
        return default
    try:
        return int(value)
    except ValueError:
        raise ShardError(f"environment variable {name} is not an integer: {value!r}") from None


def shard_from_environment(env: Mapping[str, str]) -> Shard:
    """The shard a Slurm array task or Kubernetes Indexed Job pod is; ``0/1`` outside both.

    Raises:
        ShardError: the scheduler's variables do not give a valid shard.
    """
    if env.get("SLURM_ARRAY_TASK_ID"):
        task = _integer(env, "SLURM_ARRAY_TASK_ID")
        first = _integer(env, "SLURM_ARRAY_TASK_MIN", 0)
        step = _integer(env, "SLURM_ARRAY_TASK_STEP", 1)
        count = _integer(env, "SLURM_ARRAY_TASK_COUNT")
        if step < 1 or (task - first) % step:
            raise ShardError(
                f"Slurm array task {task} is not on the range {first}::{step}; pass --shard I/N"
            )
        return _checked((task - first) // step, count, source="Slurm array")
    if env.get("JOB_COMPLETION_INDEX"):
        index = _integer(env, "JOB_COMPLETION_INDEX")
        if not env.get(SHARD_COUNT_VARIABLE):
            raise ShardError(
                f"JOB_COMPLETION_INDEX is set but {SHARD_COUNT_VARIABLE} is not: Kubernetes does "
                f"not tell pods the number of completions, set {SHARD_COUNT_VARIABLE} to it in "
                "the Job manifest"
            )
        return _checked(index, _integer(env, SHARD_COUNT_VARIABLE), source="Indexed Job")
    return Shard(0, 1)


def _checked(index: int, count: int, *, source: str) -> Shard:
    try:
        return Shard(index, count)
    except ShardError as error:
        raise ShardError(f"{source} environment: {error}; pass --shard I/N") from None


def resolve_shard(explicit: str | None, env: Mapping[str, str]) -> Shard:
    """``--shard`` when given (it wins), else what the scheduler's environment says."""
    return Shard.parse(explicit) if explicit else shard_from_environment(env)
