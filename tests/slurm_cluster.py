"""A real single-host Slurm cluster for tests: ``munged``, ``slurmctld`` and ``slurmd`` from
Debian's packages (``slurm-wlm``, ``munge``), configured in a temporary folder, on loopback.

Use the session fixture from a test module (conftest stays untouched)::

    from tests.slurm_cluster import slurm_cluster  # noqa: F401

Everything the cluster needs lives in its folder: a fresh munge key and socket (``AuthInfo``
points Slurm at it, so a system munged, if any, is left alone), ``slurm.conf`` with free ports,
state, spool and logs. Commands reach it through ``SLURM_CONF`` (:meth:`SlurmCluster.env`).
Processes are tracked without cgroups (``proctrack/linuxproc``), which containers often lack.
Two nodes, ``node1`` and ``node2``, run as two slurmd on this host (each on its own port, with
half the machine's CPUs), so array tasks and multi-node jobs really spread over nodes. The
daemons run in the foreground as children of the test process and are stopped (SIGTERM, then
SIGKILL) at the end.

Binaries: ``munged``, ``slurmctld``, ``slurmd`` and the client commands (``sbatch``,
``squeue``, ``scontrol``, ``scancel``, ``srun``). When they are missing the fixture FAILS (it
does not skip) with the command that installs them; ``.ci/provision.sh`` (run by ``make test``)
installs them.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.mlflow_server import free_port, stop_process_group

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "srun", "sinfo")
SEARCH_PATH = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
INSTALL_HINT = "apt-get install -y --no-install-recommends slurm-wlm munge"
NODES = ("node1", "node2")
PARTITION = "debug"


def find_binary(name: str) -> Path:
    """``name`` on ``PATH`` or in the system folders (daemons sit in ``/usr/sbin``)."""
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SEARCH_PATH))
    if found is None:
        pytest.fail(f"{name} is not installed (Slurm tests); on Debian/Ubuntu: {INSTALL_HINT}")
    return Path(found)


def _tail(path: Path, size: int = 3000) -> str:
    return path.read_text(errors="replace")[-size:] if path.exists() else "(no log)"


@dataclass(frozen=True)
class SlurmCluster:
    """A running cluster: its folder, ``slurm.conf``, one partition of its nodes (``cpus``
    each)."""

    folder: Path
    conf: Path
    cpus: int

    def env(self, **extra: str) -> dict[str, str]:
        """This process's environment with ``SLURM_CONF`` pointing at the cluster (and the
        Slurm commands' folder on ``PATH``)."""
        path = os.pathsep.join([str(find_binary("sbatch").parent), os.environ.get("PATH", "")])
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": path, **extra}

    def run(self, *command: str, cwd: Path | None = None, **extra: str) -> str:
        """Run a Slurm command against the cluster; its standard output.

        Raises:
            AssertionError: it failed (with its output).
        """
        done = subprocess.run(
            list(command), env=self.env(**extra), cwd=cwd, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{' '.join(command)}: {done.stdout}{done.stderr}"
        return done.stdout

    def job_states(self, job_id: str) -> dict[str, str]:
        """``JOBID -> STATE`` of a job's tasks (array tasks as ``ID_INDEX``) still known to
        ``slurmctld`` (finished ones stay ``MinJobAge`` seconds)."""
        text = self.run("squeue", "--states=all", "--noheader", "--format=%i %T", "-j", job_id)
        return dict(line.split() for line in text.splitlines() if line.strip())

    def wait_for(self, job_id: str, *, timeout_s: float = 600.0) -> dict[str, str]:
        """Wait until every task of ``job_id`` has ended; their final states.

        Raises:
            AssertionError: still running after ``timeout_s`` (with slurmctld's log end).
        """
        ended = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = self.job_states(job_id)
            if states and all(state in ended for state in states.values()):
                return states
            time.sleep(0.5)
        raise AssertionError(
            f"job {job_id} still running after {timeout_s} s: {self.job_states(job_id)}\n"
            f"{_tail(self.folder / 'slurmctld.log')}"
        )


def _slurm_conf(folder: Path, *, cpus: int, memory_mb: int) -> str:
    user = getpass.getuser()
    host = socket.gethostname().split(".")[0]
    return "\n".join(
        [
            "ClusterName=medseg-test",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmUser={user}",
            f"SlurmdUser={user}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={folder / 'munge.socket'}",
            f"StateSaveLocation={folder / 'state'}",
            f"SlurmdSpoolDir={folder / 'spool' / '%n'}",
            f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
            f"SlurmdPidFile={folder / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={folder / 'slurmctld.log'}",
            f"SlurmdLogFile={folder / 'slurmd-%n.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU_Memory",
            "ReturnToService=2",
            # jobs stopped by scancel or their time limit: SIGTERM, then SIGKILL KillWait later
            "KillWait=10",
            "MinJobAge=600",
            "SlurmdTimeout=60",
            "InactiveLimit=0",
            "SlurmdParameters=config_overrides",
            *(
                f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={free_port()} "
                f"CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN"
                for node in NODES
            ),
            f"PartitionName={PARTITION} Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE "
            "State=UP",
            "",
        ]
    )


def _start(command: list[str], *, log: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("ab") as output:
        return subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _wait(
    check: Callable[[], bool], what: str, processes: list[subprocess.Popen], log: Path
) -> None:
    deadline = time.monotonic() + 60
    while not check():
        if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready; log ends:\n{_tail(log)}")
        time.sleep(0.25)


def _cancel_every_job(binaries: dict[str, Path], env: dict[str, str]) -> None:
    """Cancel the jobs still queued or running and wait (up to KillWait and more) until they
    are gone, so no job step outlives the daemons that would stop it."""
    run = functools.partial(subprocess.run, env=env, capture_output=True, text=True, timeout=30)
    run([str(binaries["scancel"]), "--user", getpass.getuser()])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not run([str(binaries["squeue"]), "--noheader"]).stdout.strip():
            return
        time.sleep(0.5)


@contextlib.contextmanager
def running_slurm(*, cpus: int | None = None) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd in a fresh folder; yield the cluster once its node is
    idle; stop them (and every job step's processes) afterwards.

    Raises:
        RuntimeError: a daemon exited or was not ready within 60 s (with its log's end).
    """
    binaries = {name: find_binary(name) for name in (*DAEMONS, *CLIENTS)}
    cpus = cpus or max(1, (os.cpu_count() or 1) // len(NODES))
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 4
    folder = Path(tempfile.mkdtemp(prefix="medseg-slurm-"))
    processes: list[subprocess.Popen] = []
    try:
        for sub in ("state", "spool"):
            (folder / sub).mkdir()
        key = folder / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        conf = folder / "slurm.conf"
        conf.write_text(_slurm_conf(folder, cpus=cpus, memory_mb=memory_mb))
        env = {**os.environ, "SLURM_CONF": str(conf)}
        munge_log = folder / "munged.log"
        processes.append(
            _start(
                [
                    str(binaries["munged"]),
                    "--foreground",
                    "--force",  # as root, and in a folder munged did not create
                    f"--key-file={key}",
                    f"--socket={folder / 'munge.socket'}",
                    f"--pid-file={folder / 'munged.pid'}",
                    f"--seed-file={folder / 'munged.seed'}",
                    f"--log-file={munge_log}",
                ],
                log=munge_log,
                env=env,
            )
        )
        _wait(lambda: (folder / "munge.socket").exists(), "munged", processes, munge_log)
        controller_log = folder / "slurmctld.log"
        processes.append(
            _start([str(binaries["slurmctld"]), "-D", "-i"], log=controller_log, env=env)
        )
        cluster = SlurmCluster(folder=folder, conf=conf, cpus=cpus)

        def answers() -> bool:
            done = subprocess.run(
                [str(binaries["scontrol"]), "ping"], env=env, capture_output=True, text=True
            )
            return "is UP" in done.stdout

        _wait(answers, "slurmctld", processes, controller_log)
        for node in NODES:
            (folder / "spool" / node).mkdir()
            node_log = folder / f"slurmd-{node}.log"
            command = [str(binaries["slurmd"]), "-D", "-N", node]
            processes.append(_start(command, log=node_log, env=env))

        def idle() -> bool:
            done = subprocess.run(
                [str(binaries["sinfo"]), "-h", "-N", "-o", "%T"],
                env=cluster.env(),
                capture_output=True,
                text=True,
            )
            return done.stdout.split() == ["idle"] * len(NODES)

        _wait(idle, "slurmd", processes, node_log)
        yield cluster
    finally:
        if len(processes) == 1 + 1 + len(NODES):
            _cancel_every_job(binaries, {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")})
        for process in reversed(processes):
            stop_process_group(process)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """One real Slurm cluster (controller + two nodes) shared by the session."""
    with running_slurm() as cluster:
        yield cluster
