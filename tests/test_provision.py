""".ci/provision.sh, which ``make test`` runs first: quiet when every service is present, and
stops with the exact install command where it cannot install. Never installs from a test:
it runs as ``nobody`` under root, with MEDSEG_PROVISION_CHECK_ONLY=1 or a PATH without sudo."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "provision.sh"
INSTALL = "  sudo sh -c 'apt-get update && apt-get install -y --no-install-recommends "


def _as_unprivileged() -> dict[str, object]:
    """Run as ``nobody`` when we are root, so the script can never install anything."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam("nobody")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _provision(env: dict[str, str]) -> subprocess.CompletedProcess:
    # The script goes in on stdin: an account without rights to this checkout can still run it.
    return subprocess.run(
        [shutil.which("bash"), "-s"],
        input=SCRIPT.read_text(),
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **_as_unprivileged(),
    )


@pytest.fixture
def reachable_folder() -> Iterator[Path]:
    """A temporary folder ``nobody`` can traverse (pytest's own is private to its user)."""
    folder = Path(tempfile.mkdtemp(prefix="medseg-provision-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def _path_with(folder: Path, *commands: str) -> str:
    """A PATH holding only ``commands`` (no sudo, maybe no apt-get)."""
    folder.mkdir()
    folder.chmod(0o755)
    for command in commands:
        (folder / command).symlink_to(shutil.which(command))
    return str(folder)


def test_with_every_service_present_it_checks_and_exits_at_once() -> None:
    started = time.monotonic()
    result = _provision({"PATH": os.environ["PATH"], "MEDSEG_PROVISION_CHECK_ONLY": "1"})
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("commands", "check_only", "reason"),
    [
        (("dirname", "id", "apt-get"), "0", "installing them needs root or sudo"),
        (("dirname", "id"), "0", "this machine has no apt-get"),
        (("dirname", "id", "apt-get"), "1", "MEDSEG_PROVISION_CHECK_ONLY=1 forbids installing"),
    ],
    ids=["no-root-no-sudo", "no-apt", "check-only"],
)
def test_a_missing_service_it_cannot_install_stops_with_the_command(
    reachable_folder: Path, commands: tuple[str, ...], check_only: str, reason: str
) -> None:
    tmp_path = reachable_folder
    (tmp_path / "plugins").mkdir()  # Orthanc's DICOMweb plugin is not there
    env = {
        "PATH": _path_with(tmp_path / "bin", *commands),
        "ORTHANC_PLUGINS_DIR": str(tmp_path / "plugins"),
        "MEDSEG_PROVISION_CHECK_ONLY": check_only,
    }
    result = _provision(env)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: services the tests start are not installed: ")
    assert f"orthanc; {reason}" in lines[0]
    assert lines[-1].startswith(INSTALL) and lines[-1].endswith(" orthanc orthanc-dicomweb'")
