"""Pipeline files (``pipelines/NAME.yaml``): which stages run, in which order, with which options.

Format::

    name: demo                       # names the MLflow parent run
    experiment: medseg-demo          # MLflow experiment of the parent and stage runs
    data_root: ../demo_output/data   # default for --data-root (relative to this file)
    config_root: ..                  # 'config:' and 'manifest:' paths are relative to this
                                     # (relative to this file; default: its parent folder)
    stages:
      - stage: ingest                # a stage kind (medseg.pipeline.stages.STAGES)
        name: ingest                 # optional folder name under the work dir (default: kind)
        input: dicom/train           # options of that kind; data paths are relative to the
                                     # data root given at run time

Unknown keys are errors that name the file, the stage and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medseg.config_io import validation_problems
from medseg.errors import ConfigError, MedsegError, PipelineError, UnknownChoiceError
from medseg.lookup import look_up_option
from medseg.pipeline.stages import STAGES, StageContext, StageDefinition


class StageSpec(BaseModel):
    """One stage of a pipeline: its kind, folder name and validated options."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    kind: str
    name: str
    options: BaseModel

    @property
    def definition(self) -> StageDefinition:
        return STAGES[self.kind]


class PipelineSpec(BaseModel):
    """A parsed pipeline file with its paths resolved."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    path: Path
    name: str
    experiment: str = "medseg-pipelines"
    data_root: Path | None = None
    config_root: Path
    stages: list[StageSpec] = Field(default_factory=list)

    def stage_names(self) -> list[str]:
        return [stage.name for stage in self.stages]


class PipelineFile(BaseModel):
    """The top level of a pipeline file as written (paths not yet resolved); unknown keys
    are refused."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    name: str | None = None  # default: the file's name without .yaml
    description: str | None = None
    experiment: str | None = None  # default: medseg-pipelines
    data_root: str | None = None  # relative to the file
    config_root: str = ".."  # relative to the file
    stages: list[Any] = Field(min_length=1)  # each checked against its kind by _stage


def load_pipeline(path: Path, overrides: list[str] | None = None) -> PipelineSpec:
    """Read and validate a pipeline file; ``overrides`` are ``STAGE.KEY=VALUE`` (YAML value).

    Raises:
        ConfigError: unreadable YAML, unknown keys or stage kinds, invalid options, duplicate
            stage names (the message names the file and the stage).
    """
    path = Path(path).resolve()
    try:
        payload = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the pipeline: {exc}") from exc
    if not isinstance(payload, dict):
        raise ConfigError(f"{path}: expected a mapping with 'name' and 'stages'")
    try:
        top = PipelineFile.model_validate(payload)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_top_level_problems(exc)}") from exc
    stages = top.stages
    _apply_overrides(path, stages, overrides or [])
    parsed = [_stage(path, index, raw) for index, raw in enumerate(stages)]
    names = [stage.name for stage in parsed]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"{path}: stage names must be unique; repeated: {duplicates}")
    here = path.parent
    return PipelineSpec(
        path=path,
        name=top.name or path.stem,
        experiment=top.experiment or "medseg-pipelines",
        data_root=(here / top.data_root).resolve() if top.data_root else None,
        config_root=(here / top.config_root).resolve(),
        stages=parsed,
    )


def _top_level_problems(error: ValidationError) -> str:
    """The one-line problem of a pipeline file's top level: unknown keys, the stage list, or
    invalid values."""
    problems = error.errors()
    if unknown := sorted(str(p["loc"][0]) for p in problems if p["type"] == "extra_forbidden"):
        return f"unknown key(s) {unknown}; allowed: {sorted(PipelineFile.model_fields)}"
    if any(p["loc"][:1] == ("stages",) for p in problems):
        return "'stages' must be a non-empty list"
    return validation_problems(error)


def check_stage_inputs(
    spec: PipelineSpec, *, data_root: Path, work_dir: Path, until: str | None = None
) -> None:
    """Refuse a pipeline whose stages (up to ``until``) name files or folders that do not
    exist under the data root or the config root, before the first stage runs.

    Raises:
        PipelineError: naming the pipeline file and every missing path, by stage.
    """
    problems = []
    for stage in spec.stages:
        context = StageContext(
            name=stage.name,
            folder=work_dir / stage.name,
            data_root=data_root,
            config_root=spec.config_root,
            tracking_uri="",
            experiment=spec.experiment,
            parent_run_id=None,
            provided={},
        )
        try:
            stage.definition.inputs(context, stage.options)
        except MedsegError as error:
            problems.append(str(error))
        if stage.name == until:
            break
    if problems:
        raise PipelineError(f"{spec.path}: {'; '.join(problems)}")


def _stage(path: Path, index: int, raw: Any) -> StageSpec:
    where = f"{path}: stage {index + 1}"
    if not isinstance(raw, dict) or "stage" not in raw:
        raise ConfigError(f"{where}: expected a mapping with 'stage: <kind>'")
    options = dict(raw)
    kind = str(options.pop("stage"))
    name = str(options.pop("name", kind))
    try:
        look_up_option(kind, STAGES, what="stage kind")
    except UnknownChoiceError as error:
        raise ConfigError(f"{where}: {error}") from None
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"{where}: stage name {name!r} must be letters, digits, - or _")
    try:
        validated = STAGES[kind].options.model_validate(options)
    except ValidationError as exc:
        problems = validation_problems(exc, STAGES[kind].options)
        raise ConfigError(f"{where} ({name}): {problems}") from exc
    return StageSpec(kind=kind, name=name, options=validated)


def _apply_overrides(path: Path, stages: list[Any], overrides: list[str]) -> None:
    """Set ``STAGE.KEY=VALUE`` options (e.g. ``train.max_minutes=5``) in the raw stage list.

    VALUE is read as YAML; an empty VALUE is refused (write ``null`` to unset an option).
    """
    by_name = {
        str(raw.get("name", raw.get("stage"))): raw for raw in stages if isinstance(raw, dict)
    }
    for override in overrides:
        where = f"--set {override!r}"
        target, equals, text = override.partition("=")
        stage, dot, key = target.strip().partition(".")
        if not (stage and dot and key and equals):
            raise ConfigError(f"{where}: expected STAGE.KEY=VALUE, e.g. train.max_minutes=5")
        if not text.strip():
            raise ConfigError(f"{where}: empty value; give one, or 'null' to unset {key}")
        if key in ("stage", "name"):
            raise ConfigError(f"{where}: a stage's kind and name are not options")
        if stage not in by_name:
            raise ConfigError(
                f"{where}: no stage named {stage!r} in {path}; stages: {list(by_name)}"
            )
        try:
            by_name[stage][key] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            problem = " ".join(str(exc).split())
            raise ConfigError(f"{where}: the value is not valid YAML: {problem}") from exc
