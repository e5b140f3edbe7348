"""DICOM ingest of multi-channel cases: the series of one study that a rule names become the
channels of one case (e.g. MR T1 and T2 acquired in one session).

A rule (YAML, ``medseg ingest --channels rule.yaml``) lists the channels in order, each with a
case-insensitive glob on SeriesDescription::

    channels:
      - {name: T1, series_description: "*t1*"}
      - {name: T2, series_description: "*t2*"}

Per study (StudyInstanceUID, compared as its hash): when no series matches any channel, its
series stay cases of their own. When every channel matches exactly one series, those series
become one case: channel 0's case id and source, the volumes stacked (``medseg.io.channels``:
co-registered with channel 0 or refused) and ``channel_names`` in the volume's metadata (the
manifest record's ``extra.channel_names``). Otherwise (a channel matched by no series or by
several) the study's matching series fail as one case, with the reason. Series descriptions a
patient identifier made medseg withhold (``medseg.io.dicom.metadata``) match nothing.
"""

from __future__ import annotations

import functools
from fnmatch import fnmatchcase
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from medseg.config_io import load_yaml_model
from medseg.errors import ChannelsError
from medseg.ingest.discovery import ScanTask
from medseg.io.channels import stack_channels
from medseg.volume import Volume


class ChannelMatch(BaseModel):
    """One channel: its name and the SeriesDescription glob that finds its series."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    series_description: str = Field(min_length=1)

    def matches(self, task: ScanTask) -> bool:
        """True for a DICOM series whose (kept) SeriesDescription matches the glob."""
        description = task.series.metadata.get("series_description") if task.series else None
        return description is not None and fnmatchcase(
            str(description).lower(), self.series_description.lower()
        )


class ChannelRule(BaseModel):
    """The channels of a case, in order (at least two)."""

    model_config = ConfigDict(extra="forbid")

    channels: list[ChannelMatch] = Field(min_length=2)


def load_channel_rule(path: Path) -> ChannelRule:
    """Read a channel rule from YAML.

    Raises:
        ConfigError: the file is missing, not YAML, or not a rule (names the key).
    """
    return load_yaml_model(path, ChannelRule)


def _read_channels(tasks: tuple[ScanTask, ...], names: tuple[str, ...], where: str) -> Volume:
    volumes = [
        (f"series {task.public_name} ({channel})", task.reader(task.public_name))
        for task, channel in zip(tasks, names, strict=True)
    ]
    try:
        volume = stack_channels(volumes)
    except ChannelsError as error:  # name the channel that does not fit, not only the case
        raise ChannelsError(where, str(error)) from error
    volume.metadata["channel_names"] = list(names)
    return volume


def _refuse(problem: str, where: str) -> Volume:
    raise ChannelsError(where, problem)


def _study_task(study: list[ScanTask], rule: ChannelRule) -> ScanTask | None:
    """The one task of a study's channel series, or None when no series matches the rule."""
    matched = [[task for task in study if channel.matches(task)] for channel in rule.channels]
    involved = [task for task in study if any(task is t for tasks in matched for t in tasks)]
    if not involved:
        return None
    first = (matched[0] or involved)[0]
    if all(len(tasks) == 1 for tasks in matched) and len(involved) == len(rule.channels):
        reader = functools.partial(
            _read_channels,
            tuple(tasks[0] for tasks in matched),
            tuple(channel.name for channel in rule.channels),
        )
    else:
        counts = ", ".join(
            f"{channel.name} ({channel.series_description!r}): {len(tasks)}"
            for channel, tasks in zip(rule.channels, matched, strict=True)
        )
        problem = f"the channel rule needs one series per channel in the study; found {counts}"
        reader = functools.partial(_refuse, problem)
    return ScanTask(
        source=first.source,
        case_id=first.case_id,
        files=[path for task in involved for path in task.files],
        reader=reader,
        root=first.root,
        paths_shown=first.paths_shown,
        recipe=_recipe(rule),
    )


def _recipe(rule: ChannelRule) -> str:
    """The rule as ingest fingerprints a case: another order or name of the channels converts
    the case again."""
    return "channels=" + ";".join(
        f"{channel.name}:{channel.series_description.lower()}" for channel in rule.channels
    )


def assemble_channels(tasks: list[ScanTask], rule: ChannelRule) -> list[ScanTask]:
    """``tasks`` with each study's channel series replaced by one task (see the module rules)."""
    studies: dict[str, list[ScanTask]] = {}
    for task in tasks:
        study = task.series.metadata.get("study_uid_hash") if task.series else None
        if study is not None:
            studies.setdefault(str(study), []).append(task)
    assembled: dict[int, ScanTask] = {}
    replaced: set[int] = set()
    for study in studies.values():
        combined = _study_task(study, rule)
        if combined is None:
            continue
        members = [task for task in study if any(c.matches(task) for c in rule.channels)]
        replaced.update(id(task) for task in members)
        assembled[id(members[0])] = combined
    return [
        assembled.get(id(task), task)
        for task in tasks
        if id(task) in assembled or id(task) not in replaced
    ]
