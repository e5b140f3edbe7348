"""The test Orthanc itself: HTTPS with its own CA, authentication, the install hint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.orthanc_server import (
    OrthancNotInstalled,
    OrthancServer,
    find_orthanc,
    require_orthanc,
    running_orthanc,
)


@pytest.fixture(scope="module")
def tls_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """One HTTPS Orthanc for the module."""
    require_orthanc()
    with running_orthanc(tmp_path_factory.mktemp("orthanc-tls"), tls=True) as server:
        yield server


def test_https_verifies_with_the_ca(tls_orthanc: OrthancServer) -> None:
    assert tls_orthanc.http_url.startswith("https://127.0.0.1:")
    assert tls_orthanc.ca_certificate is not None
    auth, ca = (tls_orthanc.username, tls_orthanc.password), str(tls_orthanc.ca_certificate)
    for url in (tls_orthanc.http_url, tls_orthanc.http_url.replace("127.0.0.1", "localhost")):
        answer = requests.get(f"{url}/system", auth=auth, verify=ca, timeout=10)
        assert answer.status_code == 200
        assert answer.json()["Name"] == "medseg-test"
    qido = requests.get(f"{tls_orthanc.dicomweb_url}/studies", auth=auth, verify=ca, timeout=10)
    assert qido.status_code == 200


def test_https_without_the_ca_fails(tls_orthanc: OrthancServer) -> None:
    auth = (tls_orthanc.username, tls_orthanc.password)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{tls_orthanc.http_url}/system", auth=auth, timeout=10)


def test_authentication_is_required(tls_orthanc: OrthancServer) -> None:
    ca = str(tls_orthanc.ca_certificate)
    url = f"{tls_orthanc.http_url}/system"
    assert requests.get(url, verify=ca, timeout=10).status_code == 401
    wrong = requests.get(url, auth=(tls_orthanc.username, "wrong"), verify=ca, timeout=10)
    assert wrong.status_code == 401


def test_missing_plugin_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ORTHANC_PLUGINS_DIR", str(tmp_path))
    with pytest.raises(OrthancNotInstalled, match=r"apt-get install .*orthanc orthanc-dicomweb"):
        find_orthanc()
