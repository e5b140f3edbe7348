"""The filter rules of a PACS file applied to series: which ones medseg segments.

Rules the protocols can ask the PACS for (modality, study date range) go into the query
(``series_query``); every rule is checked again here (``SeriesFilter.reason_to_skip``), since
PACS differ in which query keys they honour, and the rest (body part, description patterns,
instance count) exist only here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta

from medseg.pacs.client import SeriesInfo, SeriesQuery
from medseg.pacs.config import FilterRules


@dataclass(frozen=True)
class DateRange:
    """Inclusive study date bounds; None is open."""

    start: date | None
    end: date | None

    def __contains__(self, day: date | None) -> bool:
        if day is None:
            return self.start is None and self.end is None
        return (self.start is None or day >= self.start) and (self.end is None or day <= self.end)


def study_dates(rules: FilterRules, today: date) -> DateRange:
    """The study date range of ``rules`` on ``today``: ``from``/``to`` intersected with the
    last ``last_days`` days (today included)."""
    start, end = rules.study_date.start, rules.study_date.end
    if rules.study_date.last_days:
        recent = today - timedelta(days=rules.study_date.last_days - 1)
        start = max(start, recent) if start else recent
        end = min(end, today) if end else today
    return DateRange(start, end)


class SeriesFilter:
    """Decides, per series, whether the rules take it, and why not."""

    def __init__(self, rules: FilterRules, *, today: date | None = None) -> None:
        self.rules = rules
        self.dates = study_dates(rules, today or date.today())
        self._modalities = {m.upper() for m in rules.modalities}
        self._body_parts = {b.upper() for b in rules.body_parts}
        self._include = re.compile(rules.series_description) if rules.series_description else None
        exclude = rules.exclude_series_description
        self._exclude = re.compile(exclude) if exclude else None

    def query(self, study_uid: str | None = None) -> SeriesQuery:
        """What the PACS is asked for."""
        return SeriesQuery(
            modalities=tuple(sorted(self._modalities)),
            study_date_from=self.dates.start,
            study_date_to=self.dates.end,
            study_uid=study_uid,
        )

    def reason_to_skip(self, series: SeriesInfo) -> str | None:
        """Why the rules leave ``series`` out (no patient data in the text), or None."""
        if self._modalities and series.modality.upper() not in self._modalities:
            return f"modality {series.modality or '(none)'} not in {sorted(self._modalities)}"
        if self._body_parts and series.body_part.upper() not in self._body_parts:
            return f"body part {series.body_part or '(none)'} not in {sorted(self._body_parts)}"
        if series.study_date not in self.dates:
            return "study date outside the configured range"
        description = series.series_description
        if self._include and not self._include.search(description):
            return "series description does not match series_description"
        if self._exclude and self._exclude.search(description):
            return "series description matches exclude_series_description"
        if series.instances is not None and series.instances < self.rules.min_instances:
            return f"{series.instances} instance(s), fewer than min_instances"
        return None

    def select(self, series: Iterable[SeriesInfo]) -> tuple[list[SeriesInfo], list[str]]:
        """The series the rules take, and the reasons of those left out."""
        taken, reasons = [], []
        for item in series:
            reason = self.reason_to_skip(item)
            if reason is None:
                taken.append(item)
            else:
                reasons.append(reason)
        return taken, reasons
