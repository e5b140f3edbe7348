"""Scans per hour of ``medseg batch`` on the Slurm test's 24 phantom DICOM series (one corrupt),
with the same tiny registered model: 1 worker, 2 workers, and 2 concurrent Slurm array tasks
through ``deploy/slurm/submit.sh`` on the test cluster (``tests/slurm_cluster.py``: two 1-CPU
nodes on this machine), plus what Slurm itself adds per task (an array of 2 empty tasks,
submit to end).

    python bench/slurm_throughput.py [--repeats 2] [--work bench/_work/slurm_throughput]

Needs what the Slurm and MLflow tests need (``make test-slow`` provisions it); run it as root or
as a user who may start the Slurm daemons. Prints a markdown table; the numbers go into
``docs/deployment.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from medseg.datasets import import_dataset  # noqa: E402
from medseg.preprocess.config import PlanOptions  # noqa: E402
from medseg.preprocess.plan import plan_manifest  # noqa: E402
from tests.mlflow_server import running_mlflow_server  # noqa: E402
from tests.packaged_model import log_tiny_unet  # noqa: E402
from tests.phantoms import write_phantom_dicom  # noqa: E402
from tests.slurm_cluster import SlurmCluster, running_slurm  # noqa: E402
from tests.tiny_dataset import PLAN_OPTIONS, write_tiny_dataset  # noqa: E402

SERIES = 24
SUBMIT = REPOSITORY / "deploy" / "slurm" / "submit.sh"
VENV_BIN = Path(sys.executable).parent


def prepare(work: Path, tracking: str) -> tuple[Path, str]:
    """The 24 series (series_23 with a slice cut short) and the registered tiny model."""
    scans = work / "scans"
    if not scans.exists():
        for seed in range(SERIES):
            write_phantom_dicom(scans / f"series_{seed:02d}", seed)
        broken = sorted((scans / "series_23").glob("*.dcm"))[3]
        broken.write_bytes(broken.read_bytes()[:600])
    data = work / "dataset"
    shutil.rmtree(data, ignore_errors=True)
    manifest = data / "manifest.jsonl"
    import_dataset(write_tiny_dataset(data / "data"), manifest_path=manifest, val_fraction=0.2)
    plan = plan_manifest(manifest, options=PlanOptions(**PLAN_OPTIONS))
    log_tiny_unet(plan, tracking, registered_model_name="throughput")
    return scans, "models:/throughput/1"


def timed(command: list[str], env: dict[str, str]) -> float:
    """Wall seconds of a command (which must succeed or exit 1: a scan failed)."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    return time.perf_counter() - start


def through_slurm(cluster: SlurmCluster, env: dict[str, str], work: Path) -> float:
    """Seconds from ``submit.sh`` (2 array tasks) to the end of both tasks."""
    start = time.perf_counter()
    printed = cluster.run(
        "bash", str(SUBMIT), "--array=0-1", "--cpus-per-task=1", "--mem=2G", cwd=work, **env
    )
    array = printed.split("array job ")[1].split()[0]
    summary = printed.split("summary job ")[1].split()[0].rstrip(";")
    cluster.wait_for(array)
    elapsed = time.perf_counter() - start
    cluster.wait_for(summary)  # not timed: the scans are done; it must end before the next run
    return elapsed


def empty_array(cluster: SlurmCluster, work: Path) -> float:
    """Seconds from sbatch to the end of an array of 2 tasks that do nothing."""
    start = time.perf_counter()
    job = cluster.run("sbatch", "--parsable", "--array=0-1", "--wrap", "true", cwd=work).strip()
    cluster.wait_for(job)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", type=Path, default=REPOSITORY / "bench/_work/slurm_throughput")
    arguments = parser.parse_args()
    work = arguments.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    rows: dict[str, list[float]] = {"1 worker": [], "2 workers": [], "slurm": [], "empty": []}
    with running_mlflow_server(work / "mlflow") as tracking, running_slurm() as cluster:
        scans, model = prepare(work, tracking)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        }
        slurm_env = {
            "SCANS_ROOT": str(scans),
            "MODEL_URI": model,
            "MLFLOW_TRACKING_URI": tracking,
            "CONTAINER_RUNTIME": "none",
            "PATH": env["PATH"],
            "WORKERS": "1",
            "CASE_IDS": "folder",
            "MLFLOW_ENV_FILE": "/nonexistent",
        }
        for repeat in range(arguments.repeats):
            for workers in (1, 2):
                out = work / f"out_w{workers}_{repeat}"
                shutil.rmtree(out, ignore_errors=True)
                command = [str(VENV_BIN / "medseg"), "batch", str(scans), "--model", model]
                command += ["--tracking-uri", tracking, "--out", str(out), "--workers"]
                command += [str(workers), "--case-ids", "folder"]
                rows[f"{workers} worker{'s' if workers > 1 else ''}"].append(timed(command, env))
            out = work / f"out_slurm_{repeat}"
            shutil.rmtree(out, ignore_errors=True)
            rows["slurm"].append(
                through_slurm(cluster, {**slurm_env, "OUT_DIR": str(out)}, out, work)
            )
            rows["empty"].append(empty_array(cluster, work))
    best = {name: min(times) for name, times in rows.items()}
    lines = [
        f"| how | seconds (best of {arguments.repeats}) | scans per hour |",
        "| --- | --- | --- |",
    ]
    labels = {
        "1 worker": "`medseg batch --workers 1`",
        "2 workers": "`medseg batch --workers 2`",
        "slurm": "`submit.sh --array=0-1`: 2 concurrent array tasks, 1 worker each",
    }
    for name, label in labels.items():
        lines.append(f"| {label} | {best[name]:.1f} | {3600 * SERIES / best[name]:.0f} |")
    lines.append(f"| an array of 2 empty tasks (Slurm alone) | {best['empty']:.1f} | |")
    table = "\n".join(lines)
    report = {
        "seconds": rows,
        "best": best,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    (work / "results.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    print(table)
    print(f"load average before {load_before}, after {os.getloadavg()}")


if __name__ == "__main__":
    main()
