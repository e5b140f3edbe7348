"""The PACS connection file: where the PACS is, how to log in, what to pull, what to send back.

A YAML file (see ``configs/pacs/orthanc.yaml``)::

    connection:
      name: main-pacs               # used in messages and records
      protocol: dicomweb            # or dimse
      dicomweb:
        url: https://pacs.example.org/dicom-web
        username: medseg
        password_env: MEDSEG_PACS_PASSWORD     # or password_file: /run/secrets/pacs
        ca_bundle: /etc/medseg/pacs-ca.pem     # TLS: the CA that signed the PACS certificate
      dimse:
        host: 10.1.2.3
        port: 104
        called_ae: PACS
        calling_ae: MEDSEG
    filters:
      modalities: [CT]
      series_description: "(?i)abdomen|thorax"
      study_date: {last_days: 1}
    results: [seg, sr, sc]
    retry: {attempts: 5, initial_delay_seconds: 2, max_delay_seconds: 60}

Secrets never go in this file nor on the command line (shell history, ``ps``): a password or
token is named by the environment variable or the file (e.g. a Kubernetes/Docker secret) that
holds it, and read only when connecting (``medseg.pacs.secrets``). Unknown keys are errors.
"""

from __future__ import annotations

import re
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medseg.config_io import load_yaml_model


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DicomwebSettings(_Strict):
    """A DICOMweb service (QIDO-RS, WADO-RS, STOW-RS) and how to log in to it."""

    url: str = Field(description="Service root, e.g. https://pacs/dicom-web")
    username: str | None = None
    username_env: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    token_env: str | None = Field(None, description="Bearer token (OAuth) from this variable")
    token_file: Path | None = None
    ca_bundle: Path | None = Field(None, description="CA certificates to verify the server")
    verify_tls: bool = True
    client_certificate: Path | None = Field(None, description="PEM for mutual TLS")
    client_key: Path | None = None
    timeout_seconds: float = Field(60.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not re.match(r"^https?://[^/]+", url):
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _one_way_to_log_in(self) -> DicomwebSettings:
        if self.password_env and self.password_file:
            raise ValueError("give password_env or password_file, not both")
        if self.token_env and self.token_file:
            raise ValueError("give token_env or token_file, not both")
        has_password = bool(self.password_env or self.password_file)
        if has_password and (self.token_env or self.token_file):
            raise ValueError("give a password or a bearer token, not both")
        if has_password and not (self.username or self.username_env):
            raise ValueError("a password needs username or username_env")
        if self.client_key and not self.client_certificate:
            raise ValueError("client_key needs client_certificate")
        return self


class RetrieveMethod(StrEnum):
    """How DIMSE retrieves a series: C-GET on the same association (no inbound port)."""

    GET = "get"


class DimseSettings(_Strict):
    """A DIMSE peer (C-ECHO, C-FIND, C-GET, C-STORE)."""

    host: str
    port: int = Field(104, ge=1, le=65535)
    called_ae: str = Field(max_length=16)
    calling_ae: str = Field("MEDSEG", max_length=16)
    retrieve: RetrieveMethod = RetrieveMethod.GET
    timeout_seconds: float = Field(60.0, gt=0)


class ConnectionSettings(_Strict):
    """One PACS: a name and its DICOMweb or DIMSE settings."""

    name: str = "pacs"
    protocol: Literal["dicomweb", "dimse"] = "dicomweb"
    dicomweb: DicomwebSettings | None = None
    dimse: DimseSettings | None = None

    @model_validator(mode="after")
    def _protocol_has_settings(self) -> ConnectionSettings:
        if getattr(self, self.protocol) is None:
            raise ValueError(f"protocol {self.protocol} needs a '{self.protocol}:' section")
        return self


class StudyDateRule(_Strict):
    """Study dates to take: a fixed range and/or the last N days (today included)."""

    start: date | None = Field(None, alias="from")
    end: date | None = Field(None, alias="to")
    last_days: int | None = Field(None, ge=1)


class FilterRules(_Strict):
    """Which series to segment. Empty rules take everything."""

    modalities: tuple[str, ...] = ("CT",)
    body_parts: tuple[str, ...] = ()  # BodyPartExamined, case-insensitive; empty = any
    series_description: str | None = None  # regular expression, searched
    exclude_series_description: str | None = r"(?i)scout|topogram|localizer|dose|report"
    study_date: StudyDateRule = StudyDateRule()
    min_instances: int = Field(10, ge=1)

    @field_validator("series_description", "exclude_series_description")
    @classmethod
    def _valid_pattern(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"{pattern!r} is not a regular expression: {error}") from error
        return pattern


class ResultKind(StrEnum):
    """What is sent back for a segmented series."""

    SEG = "seg"  # DICOM Segmentation: the label map, displayed over the images
    SR = "sr"  # DICOM SR (TID 1500): organ volumes, referencing the SEG segments
    SC = "sc"  # secondary capture: overlay picture + volume table, shown by every viewer
    RTSTRUCT = "rtstruct"  # RT Structure Set (batch --rtstruct): contours for planning systems


class RetrySettings(_Strict):
    """Retries of a failing request: delays double from ``initial`` up to ``max``."""

    attempts: int = Field(5, ge=1)
    initial_delay_seconds: float = Field(2.0, ge=0)
    max_delay_seconds: float = Field(60.0, ge=0)


class PacsConfig(_Strict):
    """The whole PACS file."""

    connection: ConnectionSettings
    filters: FilterRules = FilterRules()
    results: tuple[ResultKind, ...] = (ResultKind.SEG, ResultKind.SR, ResultKind.SC)
    retry: RetrySettings = RetrySettings()


def load_pacs_config(path: Path) -> PacsConfig:
    """Read and validate a PACS file.

    Raises:
        ConfigError: naming the file and every offending key.
    """
    return load_yaml_model(path, PacsConfig)
