"""What every pipeline stage is: options, what it needs from earlier stages, what it reads from
disk (fingerprinted for skip decisions) and what it provides to later stages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from medseg.errors import PipelineError
from medseg.progress import ProgressCallback

if TYPE_CHECKING:
    from medseg.tracking.runs import RunTracker


class StageOptions(BaseModel):
    """Base of every stage's options: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class StageContext:
    """Everything a stage may use while it runs."""

    name: str
    folder: Path  # this stage's own output folder (created)
    data_root: Path
    config_root: Path
    tracking_uri: str
    experiment: str
    parent_run_id: str | None
    provided: dict[str, Any]  # values provided by earlier stages
    resume: bool = False  # an earlier attempt with the same fingerprint was interrupted
    on_progress: ProgressCallback | None = None

    def data(self, relative: str) -> Path:
        """A path under the data root that must exist."""
        return self._existing(self.data_root / relative, "data root", relative)

    def config(self, relative: str) -> Path:
        """A configuration file under the config root that must exist."""
        return self._existing(self.config_root / relative, "config root", relative)

    def need(self, key: str) -> Any:
        """A value provided by an earlier stage.

        Raises:
            PipelineError: no earlier stage provides ``key``.
        """
        if key not in self.provided:
            raise PipelineError(f"stage {self.name!r}: needs {key!r}, which no earlier stage gives")
        return self.provided[key]

    def _existing(self, path: Path, root: str, relative: str) -> Path:
        if not path.exists():
            raise PipelineError(
                f"stage {self.name!r}: {relative!r} not found under the {root} ({path.parent})"
            )
        return path.resolve()


def no_inputs(ctx: StageContext, options: object) -> dict[str, Path]:
    """For stages that read nothing but what earlier stages provide."""
    return {}


@dataclass
class StageResult:
    """What a stage produced.

    ``provides`` holds JSON-able values and ``Path``s for later stages (paths are checked to
    still exist before a recorded result is reused); ``problems`` are partial failures (a bad
    scan) that do not stop the pipeline but make its exit code 1.
    """

    provides: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    run_id: str | None = None  # set by stages that open their own MLflow run
    summary: dict[str, Any] = field(default_factory=dict)  # shown by the CLI


@dataclass(frozen=True)
class StageDefinition:
    """One kind of stage.

    Attributes:
        kind: the name used in pipeline files (``stage: ingest``).
        options: the pydantic model of its options.
        needs: keys it reads from earlier stages, given its options.
        inputs: files and folders it reads, given its options (fingerprinted).
        run: does the work; gets the stage's MLflow run (None when ``own_run``).
        own_run: the stage opens its own MLflow run, nested under the pipeline run.
        deterministic: same inputs give the same outputs (else the output digest changes
            whenever the stage runs, e.g. training).
    """

    kind: str
    options: type[StageOptions]
    needs: Callable[[Any], tuple[str, ...]]
    inputs: Callable[[StageContext, Any], dict[str, Path]]
    run: Callable[[StageContext, Any, RunTracker | None], StageResult]
    own_run: bool = False
    deterministic: bool = True
