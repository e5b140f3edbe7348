"""A throwaway Orthanc PACS for tests: REST, DICOMweb and DIMSE on loopback, storage in a folder.

Use the module fixture from a test module (conftest stays untouched)::

    from tests.orthanc_server import orthanc_server  # noqa: F401

or the context manager ``running_orthanc(folder)`` directly, e.g. for a PACS that refuses
some SOP classes or serves HTTPS. The server listens on 127.0.0.1 only, on free ports (HTTP and
DICOM), with HTTP basic authentication (user ``medseg``, password ``s3cret`` unless told) and
the DICOMweb plugin at ``/dicom-web/``. It knows the DICOM modality ``MEDSEG`` (127.0.0.1) and
lets it C-FIND, C-GET, C-MOVE and C-STORE; its own AE title is ``ORTHANC`` and it does not check
the called AE title. Configuration, storage, log (``orthanc.log``), Lua script and certificates
all live in the given folder, which is left in place for a post-mortem.

Binaries: ``Orthanc`` on ``PATH`` or ``/usr/sbin/Orthanc``, and ``libOrthancDicomWeb.so`` in
``$ORTHANC_PLUGINS_DIR`` or ``/usr/share/orthanc/plugins`` (Debian/Ubuntu packages ``orthanc``
and ``orthanc-dicomweb``). When they are missing the fixture FAILS (it does not skip) with the
command that installs them; ``.ci/provision.sh`` (run by ``make test``) installs them (its
``have_orthanc`` looks in the same places). Orthanc runs as root without complaint,
so unlike ``tests/postgres_server.py`` no account is switched.

Refusing instances (``refuse_sop_classes``): a Lua ``ReceivedInstanceFilter`` raises an error
for those SOP classes. Returning ``false`` instead is NOT a refusal a client can see in Orthanc
1.10: the instance is dropped, yet C-STORE answers Success (0x0000), ``POST /instances`` answers
200 with ``"Status": "FilteredOut"`` and STOW-RS lists it under ReferencedSOPSequence. Raising
an error makes C-STORE answer 0xA700 (Refused: out of resources), and ``POST /instances`` and
STOW-RS of that instance answer HTTP 500 ("Cannot execute a Lua command").

HTTPS (``tls=True``): a fresh CA and a server certificate for 127.0.0.1/localhost signed by
it are made with ``cryptography``; clients verify against ``OrthancServer.ca_certificate``.
Orthanc's own HTTPS (``SslEnabled``) cannot be used: the Debian/Ubuntu builds load OpenSSL
through civetweb 1.15, which looks up ``SSL_get_peer_certificate`` by name; OpenSSL 3 only has
it as a macro, so the first HTTPS request calls a NULL pointer and Orthanc dies with SIGSEGV
(verified with Orthanc 1.10.1 + OpenSSL 3.0, civetweb issue #1334). So TLS is terminated in
front of Orthanc, as nginx would do in production: a small proxy thread in the test process
serves ``https://127.0.0.1:PORT`` with the certificate and passes the bytes on to Orthanc's
plain-HTTP loopback port. The DICOMweb plugin is told (``"Ssl": true``) so the URLs it puts in
its answers say https.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import requests

HOST = "127.0.0.1"
AET = "ORTHANC"
CLIENT_AET = "MEDSEG"
DEFAULT_USERS: Mapping[str, str] = MappingProxyType({"medseg": "s3cret"})
BINARY_CANDIDATES = ("/usr/sbin/Orthanc",)
PLUGINS_DIR = "/usr/share/orthanc/plugins"
DICOMWEB_PLUGIN = "libOrthancDicomWeb.so"
INSTALL_HINT = (
    "Orthanc and its DICOMweb plugin were not found (Orthanc on PATH or /usr/sbin/Orthanc; "
    f"{DICOMWEB_PLUGIN} in $ORTHANC_PLUGINS_DIR or {PLUGINS_DIR}). Install them, e.g. on "
    "Debian/Ubuntu: `sudo apt-get update && sudo apt-get install -y --no-install-recommends "
    "orthanc orthanc-dicomweb`. `make test` installs them (.ci/provision.sh)."
)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class OrthancNotInstalled(RuntimeError):
    """Orthanc or its DICOMweb plugin is not on this machine."""


@dataclass(frozen=True)
class OrthancServer:
    """A running Orthanc: how to reach it, and small REST helpers for checking what it holds."""

    http_url: str
    dicomweb_url: str
    dicom_port: int
    aet: str
    username: str
    password: str = field(repr=False)
    folder: Path
    log_path: Path
    ca_certificate: Path | None = None
    host: str = HOST

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """An authenticated REST request (``path`` like ``/system``); raises on HTTP errors."""
        kwargs.setdefault("timeout", 30)
        response = requests.request(
            method,
            f"{self.http_url}{path}",
            auth=(self.username, self.password),
            verify=str(self.ca_certificate) if self.ca_certificate else True,
            **kwargs,
        )
        response.raise_for_status()
        return response

    def get_json(self, path: str) -> Any:
        """``GET path`` as JSON."""
        return self.request("GET", path).json()

    def upload(self, files: Iterable[Path]) -> list[dict[str, Any]]:
        """``POST /instances`` each file; Orthanc's answers (``ID``, ``Status``, parents)."""
        return [self.request("POST", "/instances", data=Path(f).read_bytes()).json() for f in files]

    def studies(self) -> list[dict[str, Any]]:
        """Every study, expanded (``MainDicomTags``, ``Series`` ids)."""
        return self.get_json("/studies?expand")

    def series_of_study(self, study_id: str) -> list[dict[str, Any]]:
        """The series of an Orthanc study id, expanded."""
        return self.get_json(f"/studies/{study_id}/series")

    def instances_of_series(self, series_id: str) -> list[dict[str, Any]]:
        """The instances of an Orthanc series id, expanded."""
        return self.get_json(f"/series/{series_id}/instances")

    def _find(self, level: str, query: dict[str, str]) -> list[dict[str, Any]]:
        body = {"Level": level, "Query": query, "Expand": True}
        return self.request("POST", "/tools/find", json=body).json()

    def find_series(self, series_instance_uid: str) -> dict[str, Any] | None:
        """The series with this SeriesInstanceUID (expanded), or None."""
        found = self._find("Series", {"SeriesInstanceUID": series_instance_uid})
        return found[0] if found else None

    def find_instance(self, sop_instance_uid: str) -> dict[str, Any] | None:
        """The instance with this SOPInstanceUID (expanded), or None."""
        found = self._find("Instance", {"SOPInstanceUID": sop_instance_uid})
        return found[0] if found else None

    def series_instances(self, series_instance_uid: str) -> list[dict[str, Any]]:
        """The instances of the series with this SeriesInstanceUID ([] if there is none)."""
        series = self.find_series(series_instance_uid)
        return self.instances_of_series(series["ID"]) if series else []

    def instance_file(self, instance_id: str) -> bytes:
        """The stored DICOM file of an Orthanc instance id."""
        return self.request("GET", f"/instances/{instance_id}/file").content

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        """All tags of an instance as ``{"Keyword": value}`` (sequences as lists of dicts)."""
        return self.get_json(f"/instances/{instance_id}/simplified-tags")

    def delete_all(self) -> None:
        """Delete every patient (and so everything): a clean PACS for the next test."""
        for patient_id in self.get_json("/patients"):
            self.request("DELETE", f"/patients/{patient_id}")


def find_orthanc() -> tuple[Path, Path]:
    """The Orthanc binary and the DICOMweb plugin.

    Raises:
        OrthancNotInstalled: either is missing (the message says how to install them).
    """
    binaries = [shutil.which("Orthanc"), *BINARY_CANDIDATES]
    binary = next((Path(b) for b in binaries if b and os.access(b, os.X_OK)), None)
    plugin = Path(os.environ.get("ORTHANC_PLUGINS_DIR") or PLUGINS_DIR) / DICOMWEB_PLUGIN
    if binary is None or not plugin.is_file():
        raise OrthancNotInstalled(INSTALL_HINT)
    return binary, plugin


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _tail(path: Path, size: int = 3000) -> str:
    return path.read_text(errors="replace")[-size:] if path.exists() else "(no log)"


def _write_certificates(folder: Path) -> tuple[Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost: (server PEM, CA PEM).

    The server PEM holds the private key and the certificate (``load_cert_chain`` reads both).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medseg test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    server_pem, ca_pem = folder / "server.pem", folder / "ca.pem"
    server_pem.write_bytes(key_pem + server_cert.public_bytes(serialization.Encoding.PEM))
    server_pem.chmod(0o600)
    ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return server_pem, ca_pem


def _refusal_script(path: Path, sop_classes: Sequence[str]) -> Path:
    """A Lua ``ReceivedInstanceFilter`` that fails for these SOP classes (see module doc)."""
    for uid in sop_classes:
        if not _UID.match(uid):
            raise ValueError(f"{uid!r} is not a SOP class UID")
    table = ", ".join(f'["{uid}"] = true' for uid in sop_classes)
    path.write_text(
        f"local refused = {{ {table} }}\n"
        "function ReceivedInstanceFilter(dicom, origin, info)\n"
        "  if refused[dicom.SOPClassUID] then\n"
        "    error('medseg test PACS refuses SOP class ' .. dicom.SOPClassUID)\n"
        "  end\n"
        "  return true\n"
        "end\n"
    )
    return path


def _config(
    folder: Path,
    http_port: int,
    dicom_port: int,
    plugin: Path,
    users: Mapping[str, str],
    lua_script: Path | None,
    tls: bool,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "Name": "medseg-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": AET,
        "DicomCheckCalledAet": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": dict(users),
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Ssl": tls},
        "DicomModalities": {
            "medseg": {
                "AET": CLIENT_AET,
                "Host": HOST,
                "Port": 11112,
                "AllowEcho": True,
                "AllowFind": True,
                "AllowGet": True,
                "AllowMove": True,
                "AllowStore": True,
            }
        },
        "SaveJobs": False,
    }
    if lua_script is not None:
        config["LuaScripts"] = [str(lua_script)]
    return config


@contextlib.contextmanager
def running_orthanc(
    folder: Path,
    *,
    tls: bool = False,
    refuse_sop_classes: Sequence[str] = (),
    users: Mapping[str, str] = DEFAULT_USERS,
    timeout_s: float = 30.0,
    attempts: int = 3,
) -> Iterator[OrthancServer]:
    """Start Orthanc with its files in ``folder`` and yield it; stop it at the end.

    The first of ``users`` is the one the REST helpers log in as. A port taken between
    choosing and binding it is retried on other ports, up to ``attempts`` times.

    Raises:
        OrthancNotInstalled: Orthanc or the DICOMweb plugin is missing (says how to install).
        RuntimeError: Orthanc exited or did not answer ``/system`` within ``timeout_s``; the
            message carries the end of its log.
    """
    binary, plugin = find_orthanc()
    if not users:
        raise ValueError("Orthanc needs at least one registered user")
    username, password = next(iter(users.items()))
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "orthanc.log"
    lua = _refusal_script(folder / "refuse.lua", refuse_sop_classes) if refuse_sop_classes else None
    certificate, ca = _write_certificates(folder / "tls") if tls else (None, None)
    process: subprocess.Popen | None = None
    terminator: _TlsTerminator | None = None
    try:
        for attempt in range(1, attempts + 1):
            http_port, dicom_port = free_port(), free_port()
            http_url = f"http://{HOST}:{http_port}"
            if certificate is not None:
                if terminator is not None:
                    terminator.stop()
                terminator = _TlsTerminator(certificate, http_port)
                http_url = f"https://{HOST}:{terminator.port}"
            config_path = folder / "orthanc.json"
            config = _config(folder, http_port, dicom_port, plugin, users, lua, tls)
            config_path.write_text(json.dumps(config, indent=2))
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [binary, config_path],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=folder,
                    start_new_session=True,
                )
            server = OrthancServer(
                http_url=http_url,
                dicomweb_url=f"{http_url}/dicom-web",
                dicom_port=dicom_port,
                aet=AET,
                username=username,
                password=password,
                folder=folder,
                log_path=log_path,
                ca_certificate=ca,
            )
            if _wait_ready(server, process, timeout_s):
                break
            log_text = _tail(log_path)
            if process.poll() is not None and "already in use" in log_text and attempt < attempts:
                continue
            state = "exited" if process.poll() is not None else f"did not answer in {timeout_s} s"
            raise RuntimeError(f"Orthanc on {http_url} {state}; log ends:\n{log_text}")
        yield server
    finally:
        if process is not None:
            _stop(process)
        if terminator is not None:
            terminator.stop()


class _TlsTerminator:
    """HTTPS on a free loopback port, passed on as plain bytes to ``127.0.0.1:upstream_port``.

    An asyncio loop in a daemon thread; each connection gets two copying tasks. A client that
    does not trust the certificate just fails its handshake (the error is not logged).
    """

    def __init__(self, certificate: Path, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(certificate)
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(lambda loop, context: None)
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="orthanc-tls", daemon=True
        )
        self._thread.start()
        start = asyncio.start_server(self._serve, HOST, 0, ssl=context)
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result(timeout=10)
        self.port: int = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await asyncio.open_connection(HOST, self._upstream_port)
        except OSError:  # Orthanc not listening (yet): the client sees a closed connection
            writer.close()
            return
        await asyncio.gather(_copy(reader, upstream[1]), _copy(upstream[0], writer))

    def stop(self) -> None:
        """Close the listening socket and every connection, end the thread."""

        async def shutdown() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._loop.is_running():
            self._loop.close()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of stream or error, then close the writer (the other side sees EOF)."""
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (OSError, ssl.SSLError):
        pass
    finally:
        writer.close()


def _wait_ready(server: OrthancServer, process: subprocess.Popen, timeout_s: float) -> bool:
    """Whether ``/system`` answered before the process exited or ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            server.request("GET", "/system", timeout=2)
            return True
        time.sleep(0.05)
    return False


def _stop(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM (Orthanc shuts down cleanly in about a second); SIGKILL the group if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def require_orthanc() -> None:
    """Fail the test (not skip) with the install command when Orthanc is missing."""
    try:
        find_orthanc()
        missing = None
    except OrthancNotInstalled as error:
        missing = str(error)
    if missing is not None:  # outside the except block: one clear message, no chained traceback
        pytest.fail(missing, pytrace=False)


@pytest.fixture(scope="module")
def orthanc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """One plain-HTTP Orthanc per test module; FAILS if Orthanc is missing."""
    require_orthanc()
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server
