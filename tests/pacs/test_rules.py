"""PACS file validation, secrets, filter rules and the retry policy (no server needed)."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pytest

from medseg.errors import ConfigError, PacsRefusedError, PacsUnavailableError, SecretError
from medseg.pacs.client import SeriesInfo
from medseg.pacs.config import FilterRules, RetrySettings, load_pacs_config
from medseg.pacs.filters import SeriesFilter
from medseg.pacs.retry import backoff_delays, with_retry
from medseg.pacs.secrets import read_secret

REPOSITORY = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pacs.yaml"
    path.write_text(text)
    return path


def test_shipped_pacs_file_is_valid() -> None:
    config = load_pacs_config(REPOSITORY / "configs/pacs/orthanc.yaml")
    assert config.connection.protocol == "dicomweb"
    assert config.connection.dicomweb.password_env == "MEDSEG_PACS_PASSWORD"
    assert [kind.value for kind in config.results] == ["seg", "sr", "sc"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("connection: {protocol: dimse}\n", "needs a 'dimse:' section"),
        ("connection: {dicomweb: {url: pacs.example.org}}\n", "not an http:// or https:// URL"),
        (
            "connection: {dicomweb: {url: 'http://x', password: hunter2}}\n",
            "password: Extra inputs are not permitted",
        ),
        (
            "connection: {dicomweb: {url: 'http://x', password_env: P}}\n",
            "a password needs username",
        ),
        (
            "connection: {dicomweb: {url: 'http://x', username: u, password_env: P, "
            "token_env: T}}\n",
            "a password or a bearer token, not both",
        ),
        (
            "connection: {dicomweb: {url: 'http://x'}}\nfilters: {series_description: '(a'}\n",
            "is not a regular expression",
        ),
        ("connection: {dimse: {host: h, called_ae: ABCDEFGHIJKLMNOPQ}, protocol: dimse}\n", "16"),
    ],
)
def test_invalid_pacs_files_name_the_file_and_key(tmp_path: Path, text: str, problem: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=r"pacs\.yaml") as caught:
        load_pacs_config(path)
    assert problem in str(caught.value)


def test_a_password_in_the_file_is_refused_not_echoed(tmp_path: Path) -> None:
    path = _write(tmp_path, "connection: {dicomweb: {url: 'http://x', password: hunter2}}\n")
    with pytest.raises(ConfigError) as caught:
        load_pacs_config(path)
    assert "hunter2" not in str(caught.value)


def test_secret_from_environment_and_file(tmp_path: Path) -> None:
    assert read_secret(env="PW", file=None, what="password", environ={"PW": "s3cret"}) == "s3cret"
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    os.chmod(secret, 0o600)
    assert read_secret(env=None, file=secret, what="password") == "from-file"
    assert read_secret(env=None, file=None, what="password") is None


def test_secret_problems_are_clear_and_never_show_the_value(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="environment variable PW is not set"):
        read_secret(env="PW", file=None, what="password", environ={})
    secret = tmp_path / "pw"
    secret.write_text("visible-to-all\n")
    os.chmod(secret, 0o644)
    with pytest.raises(SecretError, match=r"readable by other users \(mode 644\).*chmod 600") as e:
        read_secret(env=None, file=secret, what="password")
    assert "visible-to-all" not in str(e.value)
    with pytest.raises(SecretError, match="cannot read password"):
        read_secret(env=None, file=tmp_path / "missing", what="password")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    os.chmod(empty, 0o600)
    with pytest.raises(SecretError, match="file is empty"):
        read_secret(env=None, file=empty, what="password")


def _series(**fields: object) -> SeriesInfo:
    defaults = dict(
        study_uid="1.2",
        series_uid="1.2.3",
        modality="CT",
        body_part="ABDOMEN",
        series_description="Abdomen venous 1.0",
        study_date=date(2026, 11, 21),
        instances=300,
    )
    return SeriesInfo(**(defaults | fields))


def test_filter_rules_take_and_leave_out_with_reasons() -> None:
    rules = FilterRules.model_validate(
        {
            "modalities": ["ct"],
            "body_parts": ["abdomen", "chest"],
            "series_description": "(?i)venous|arterial",
            "study_date": {"last_days": 2},
            "min_instances": 20,
        }
    )
    chooser = SeriesFilter(rules, today=date(2026, 11, 22))
    assert chooser.reason_to_skip(_series()) is None
    assert chooser.reason_to_skip(_series(body_part="chest")) is None
    cases = {
        "modality MR not in ['CT']": _series(modality="MR"),
        "body part HEAD not in ['ABDOMEN', 'CHEST']": _series(body_part="HEAD"),
        "study date outside the configured range": _series(study_date=date(2026, 11, 20)),
        "series description does not match series_description": _series(
            series_description="Abdomen native"
        ),
        "series description matches exclude_series_description": _series(
            series_description="Topogram venous"
        ),
        "5 instance(s), fewer than min_instances": _series(instances=5),
    }
    for reason, series in cases.items():
        assert chooser.reason_to_skip(series) == reason
    taken, reasons = chooser.select([_series(), _series(modality="MR")])
    assert taken == [_series()] and reasons == ["modality MR not in ['CT']"]


def test_study_date_rules_combine_range_and_last_days() -> None:
    rules = FilterRules.model_validate(
        {"study_date": {"from": "2026-11-01", "to": "2026-11-30", "last_days": 7}}
    )
    chooser = SeriesFilter(rules, today=date(2026, 11, 22))
    query = chooser.query()
    assert (query.study_date_from, query.study_date_to) == (date(2026, 11, 16), date(2026, 11, 22))
    assert query.modalities == ("CT",)
    assert chooser.reason_to_skip(_series(study_date=None)) is not None
    open_rules = SeriesFilter(FilterRules(), today=date(2026, 11, 22))
    assert open_rules.reason_to_skip(_series(study_date=None)) is None


def test_backoff_doubles_up_to_the_cap() -> None:
    settings = RetrySettings(attempts=6, initial_delay_seconds=2, max_delay_seconds=10)
    assert backoff_delays(settings) == [2, 4, 8, 10, 10]


def test_retry_recovers_after_transient_errors_and_gives_up_with_the_last() -> None:
    waits: list[float] = []
    answers = [PacsUnavailableError("down"), PacsRefusedError("busy"), "ok"]

    def flaky() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    settings = RetrySettings(attempts=3, initial_delay_seconds=1, max_delay_seconds=60)
    assert with_retry(flaky, settings, what="t", sleep=waits.append) == "ok"
    assert waits == [1, 2]

    def always_down() -> None:
        raise PacsUnavailableError("pacs: down")

    waits.clear()
    with pytest.raises(PacsUnavailableError, match=r"^pacs: down \(gave up after 3 attempts\)$"):
        with_retry(always_down, settings, what="t", sleep=waits.append)
    assert waits == [1, 2]


def test_other_errors_are_not_retried() -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("a bug, not the PACS")

    with pytest.raises(ValueError):
        with_retry(broken, RetrySettings(attempts=5), what="t", sleep=lambda _: None)
    assert len(calls) == 1
