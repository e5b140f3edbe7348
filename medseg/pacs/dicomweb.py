"""``PacsClient`` over DICOMweb: QIDO-RS to find, WADO-RS to retrieve, STOW-RS to store.

Built on ``dicomweb-client``, whose own HTTP retries are switched off: ``medseg.pacs.retry``
applies the PACS file's policy to DICOMweb and DIMSE alike. TLS: ``https://`` URLs are verified
against ``ca_bundle`` (or the system store); ``verify_tls: false`` exists for test servers
only and is logged as a warning. Credentials: HTTP basic (username + password) or a bearer
token, read from the environment or a secrets file when the client is opened.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from medseg.errors import PacsRefusedError, PacsSetupError, PacsUnavailableError
from medseg.io.atomic import atomic_path
from medseg.pacs.client import SeriesInfo, SeriesQuery, instance_file_name
from medseg.pacs.config import DicomwebSettings
from medseg.pacs.secrets import read_secret

logger = logging.getLogger(__name__)
# dicomweb-client wraps each request in ``retrying``, which logs a warning per failed request
# even with its retries off; medseg's own retry logs what matters.
logging.getLogger("retrying").setLevel(logging.ERROR)

# Ask for instances as stored (``transfer-syntax=*``): the PACS need not transcode (Orthanc's
# Debian build cannot transcode JPEG 2000 at all), and lossless data stays bit for bit.
AS_STORED = (("application/dicom", "*"),)
SERIES_FIELDS = (
    "StudyDate",
    "BodyPartExamined",
    "SeriesDescription",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
)


class _Session(requests.Session):
    """A session whose own ``verify`` (the PACS file's ca_bundle or verify_tls: false) wins.

    Plain requests lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` replace ``Session.verify``
    (psf/requests#3829), so on a machine with either set a private CA would be ignored.
    """

    # unannotated: requests declares these parameters with types from its private _types module
    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # type: ignore[no-untyped-def]
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None and self.verify is not True:
            settings["verify"] = self.verify
        return settings


def dicomweb_session(settings: DicomwebSettings) -> requests.Session:
    """An HTTP session with the credentials and TLS settings of ``settings``."""
    session = _Session()
    username = settings.username or read_secret(
        env=settings.username_env, file=None, what="DICOMweb username"
    )
    password = read_secret(
        env=settings.password_env, file=settings.password_file, what="DICOMweb password"
    )
    token = read_secret(env=settings.token_env, file=settings.token_file, what="DICOMweb token")
    if password is not None:
        session.auth = (username or "", password)
    elif token is not None:
        session.headers["Authorization"] = f"Bearer {token}"
    if not settings.verify_tls:
        logger.warning("TLS certificate verification is off for %s", settings.url)
        session.verify = False
    elif settings.ca_bundle is not None:
        session.verify = str(settings.ca_bundle)
    if settings.client_certificate is not None:
        key = settings.client_key
        certificate = str(settings.client_certificate)
        session.cert = (certificate, str(key)) if key else certificate
    return session


class DicomwebClient:
    """A DICOMweb PACS (see module docstring)."""

    def __init__(self, settings: DicomwebSettings, name: str) -> None:
        self.name = name
        self._session = dicomweb_session(settings)
        self._client = DICOMwebClient(
            settings.url, session=self._session, timeout=settings.timeout_seconds
        )
        self._client.set_http_retry_params(retry=False)

    def echo(self) -> None:
        """Ask for one study: proves the URL, TLS and credentials."""
        with self._errors("echo"):
            self._client.search_for_studies(limit=1)

    def find_series(self, query: SeriesQuery) -> list[SeriesInfo]:
        """QIDO-RS series search (one request per modality)."""
        filters: dict[str, Any] = {}
        if query.study_date_from or query.study_date_to:
            filters["StudyDate"] = _date_range(query.study_date_from, query.study_date_to)
        found: dict[str, SeriesInfo] = {}
        for modality in query.modalities or (None,):
            search = dict(filters, Modality=modality) if modality else filters
            with self._errors("series search"):
                answers = self._client.search_for_series(
                    study_instance_uid=query.study_uid,
                    fields=list(SERIES_FIELDS),
                    search_filters=search,
                    get_remaining=True,
                )
            for answer in answers:
                series = series_info(Dataset.from_json(answer))
                found[series.series_uid] = series
        return list(found.values())

    def retrieve_series(self, series: SeriesInfo, folder: Path) -> list[Path]:
        """WADO-RS retrieve, instance by instance as they stream in, in their stored
        transfer syntax."""
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        with self._errors("retrieve"):
            for dataset in self._client.iter_series(
                series.study_uid, series.series_uid, media_types=AS_STORED
            ):
                path = folder / instance_file_name(str(dataset.SOPInstanceUID))
                with atomic_path(path) as tmp:
                    dataset.save_as(tmp, enforce_file_format=True)
                files.append(path)
        return files

    def store(self, files: Sequence[Path]) -> None:
        """STOW-RS; every instance must be in the answer's ReferencedSOPSequence."""
        datasets = [pydicom.dcmread(path) for path in files]
        with self._errors("store"):
            answer = self._client.store_instances(datasets)
        _check_stored(answer, datasets, files, self.name)

    def has_instance(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> bool:
        """QIDO-RS instance search on the SOP instance UID."""
        with self._errors("instance search"):
            found = self._client.search_for_instances(
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                search_filters={"SOPInstanceUID": sop_instance_uid},
            )
        return bool(found)

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """HTTP and connection errors as PacsUnavailableError (retried), PacsRefusedError
        (retried: a PACS may refuse while short of space) or PacsSetupError (TLS, login)."""
        try:
            yield
        except requests.HTTPError as error:
            status = error.response.status_code if error.response is not None else 0
            problem = f"{self.name}: DICOMweb {what}: HTTP {status}{_server_says(error.response)}"
            if status in (401, 403):
                raise PacsSetupError(f"{problem} (check the credentials)") from error
            if status >= 500 or status in (408, 429):
                raise PacsUnavailableError(problem) from error
            raise PacsRefusedError(problem) from error
        except requests.exceptions.SSLError as error:
            raise PacsSetupError(
                f"{self.name}: DICOMweb {what}: TLS: {_ssl_reason(error)} (is ca_bundle the CA "
                "that signed the server's certificate?)"
            ) from error
        except (requests.ConnectionError, requests.Timeout) as error:
            raise PacsUnavailableError(
                f"{self.name}: DICOMweb {what}: cannot reach the server ({type(error).__name__})"
            ) from error


def _server_says(response: requests.Response | None) -> str:
    """The server's own short explanation of an HTTP error (Orthanc: JSON ``Message``)."""
    if response is None:
        return ""
    try:
        message = response.json().get("Message", "")
    except (ValueError, AttributeError):
        message = response.text if "text/plain" in response.headers.get("Content-Type", "") else ""
    message = " ".join(str(message).split())[:200]
    return f" ({message})" if message else ""


def _ssl_reason(error: requests.exceptions.SSLError) -> str:
    """The OpenSSL reason of a TLS failure (e.g. "certificate verify failed: ..."), else all."""
    found = re.search(r"\[SSL: [A-Z_]+\] ([^(]+?) \(_ssl", str(error))
    return found.group(1) if found else str(error)


def _date_range(start: date | None, end: date | None) -> str:
    as_text = lambda day: day.strftime("%Y%m%d") if day else ""  # noqa: E731
    return f"{as_text(start)}-{as_text(end)}"


def series_info(dataset: Dataset) -> SeriesInfo:
    """The filter attributes of a series-level query answer."""
    number = dataset.get("SeriesNumber")
    instances = dataset.get("NumberOfSeriesRelatedInstances")
    return SeriesInfo(
        study_uid=str(dataset.StudyInstanceUID),
        series_uid=str(dataset.SeriesInstanceUID),
        modality=str(dataset.get("Modality", "")),
        body_part=str(dataset.get("BodyPartExamined", "")),
        series_description=str(dataset.get("SeriesDescription", "")),
        study_date=_parse_date(str(dataset.get("StudyDate", ""))),
        series_number=int(number) if number not in (None, "") else None,
        instances=int(instances) if instances not in (None, "") else None,
    )


def _parse_date(text: str) -> date | None:
    try:
        return datetime.strptime(text.strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _check_stored(
    answer: Dataset, datasets: Sequence[Dataset], files: Sequence[Path], name: str
) -> None:
    """Raise PacsRefusedError naming the files the STOW-RS answer does not confirm."""
    confirmed = answer.get("ReferencedSOPSequence", [])
    stored = {str(item.ReferencedSOPInstanceUID) for item in confirmed}
    failed = [
        path.name
        for path, dataset in zip(files, datasets, strict=True)
        if str(dataset.SOPInstanceUID) not in stored
    ]
    if failed:
        reasons = {
            str(item.get("FailureReason", "?")) for item in answer.get("FailedSOPSequence", [])
        }
        raise PacsRefusedError(
            f"{name}: DICOMweb store refused {', '.join(failed)} "
            f"(failure reason {', '.join(sorted(reasons)) or 'not given'})"
        )
