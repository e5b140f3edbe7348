"""Memory of ``medseg plan`` and ``medseg preprocess`` over many full-size CTs (issue 17: 50
cases of 512 x 512 x 400 under 4 GB).

``--cases`` large phantoms (``medseg.demo.large_phantom``, seeds 0..N-1, 0.8 x 0.8 x 1.0 mm,
117 structures) are written once as NIfTI image/label pairs of a flat dataset and imported;
then ``medseg plan`` and ``medseg preprocess --workers W`` run as subprocesses, each timed by
its wall clock with the peak resident memory of its whole process tree (workers included)
polled every 0.2 s. Results go to ``<work>/results.json`` with the load average before and
after: run it on an idle machine.

    .venv/bin/python bench/plan_memory.py [--cases 50] [--workers 2] [--shape 512 512 400]
        [--work bench/_work/plan_memory]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from measure import measured

LOG = logging.getLogger("plan_memory")
REPOSITORY = Path(__file__).resolve().parents[1]
FIELD_OF_VIEW_MM = (409.6, 409.6, 400.0)
GOAL_MB = 4096


def write_dataset(folder: Path, cases: int, shape: tuple[int, int, int]) -> float:
    """The phantoms as ``images/`` + ``labels/`` + ``dataset.json`` (cases already written
    are kept); seconds spent writing."""
    from medseg.demo.large_phantom import large_anatomy, make_large_phantom
    from medseg.io.nifti import write_nifti

    start = time.perf_counter()
    spacing = tuple(fov / n for fov, n in zip(FIELD_OF_VIEW_MM, shape, strict=True))
    for seed in range(cases):
        image = folder / "images" / f"large_{seed:03d}.nii.gz"
        label = folder / "labels" / f"large_{seed:03d}.nii.gz"
        if image.exists() and label.exists():
            continue
        ct, labels, _ = make_large_phantom(seed=seed, shape=shape, spacing_mm=spacing)
        write_nifti(labels, label)
        write_nifti(ct, image)  # the image last: a case with an image is complete
        LOG.info("wrote case %d of %d", seed + 1, cases)
    names = large_anatomy(0).label_names  # every seed has the same structures
    dataset = {
        "name": "large phantoms",
        "channel_names": {"0": "CT"},
        "labels": {name: value for value, name in names.items()},
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 400])
    parser.add_argument("--work", type=Path, default=REPOSITORY / "bench/_work/plan_memory")
    parser.add_argument("--memory-cap-gb", type=float, default=16.0)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    work = arguments.work.resolve()
    shape = "x".join(map(str, arguments.shape))
    dataset = work / f"dataset_{shape}_{arguments.cases}"
    load_before = os.getloadavg()
    writing = write_dataset(dataset, arguments.cases, tuple(arguments.shape))
    medseg = [sys.executable, "-m", "medseg"]
    manifest, plan, cache = work / "large.jsonl", work / "plan.json", work / "cache"
    workers = ["--workers", str(arguments.workers)]
    steps = {
        "import": [*medseg, "import-dataset", str(dataset), "--out", str(manifest)],
        "plan": [*medseg, "plan", str(manifest), "--out", str(plan), *workers],
        "preprocess": [
            *medseg, "preprocess", str(manifest), "--plan", str(plan), "--out", str(cache),
            *workers, "--force",
        ],
    }  # fmt: skip
    rows: list[dict[str, Any]] = []
    for step, command in steps.items():
        row = {"step": step}
        row |= measured(command, log=work / f"{step}.log", cap_mb=arguments.memory_cap_gb * 1024)
        rows.append(row)
        if row["exit_code"] != 0:
            break
    report = {
        "cases": arguments.cases,
        "shape": arguments.shape,
        "workers": arguments.workers,
        "dataset_seconds": round(writing, 1),
        "goal_mb": GOAL_MB,
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "rows": rows,
    }
    (work / "results.json").write_text(json.dumps(report, indent=2))
    for row in rows:
        verdict = "within" if row["peak_mb"] <= GOAL_MB else "OVER"
        print(
            f"{row['step']}: {row['seconds']} s, peak {row['peak_mb']} MB "
            f"({verdict} the {GOAL_MB} MB goal), exit {row['exit_code']}"
        )


if __name__ == "__main__":
    main()
