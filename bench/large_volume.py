"""Clinical-scale benchmark: a full-size CT series with 117 structures through ``medseg predict``
and through the standard MONAI path, with the same network and the same windows.

The scan is the large phantom (``medseg.demo.large_phantom``: 512 x 512 x 400 voxels of
0.8 x 0.8 x 1.0 mm, written as a real DICOM series once and reused, its InstanceNumber in
slice order as scanners write it, since MONAI's reader stacks slices by InstanceNumber;
``--shape`` samples the same field of view more coarsely, for a quick check with a coarser
``--target-spacing-mm``).
The network is a randomly initialised 3D U-Net (seed 0) with ``--classes`` outputs planned at
1.5 mm with a ``--patch`` window, registered in an MLflow SQLite store in the work folder. For
each class count:

* ``medseg``: ``medseg predict --model models:/bench-large-K/1 DICOM_DIR`` (label map, DICOM SEG
  with every segment, volumes), ``--overlap 0.5``, once per ``--backends``;
* ``monai``: ``LoadImage(PydicomReader)``, ``Orientation(RAS)``, ``Spacing(1.5 mm)``,
  ``ScaleIntensityRange`` (the same clip and scaling as the plan's CT normalization),
  ``sliding_window_inference`` (Gaussian, sigma 1/8, overlap 0.5, ``sw_batch_size`` each of
  ``--monai-batch``), softmax, the inverse of ``Orientation`` and ``Spacing``, argmax,
  ``SaveImage``: MONAI's documented way.

Each runs in its own process, timed by its wall clock, its peak resident memory read from
``/proc`` every 0.2 s (a run past ``--memory-cap-gb`` is stopped and reported as such). The
argmax agreement compares each MONAI label map with medseg's torch one; with random weights it
is low (near-ties everywhere, which any difference in window placement or resampling flips:
0.56 in a quick check), so the agreement goal needs a trained network (still to add). Results go to
``<work>/results.json`` and ``results.md``, with the load average before and after: run it on
an idle machine.

    .venv/bin/python bench/large_volume.py [--classes 4 16 118] [--backends torch openvino]
        [--shape 512 512 400] [--work bench/_work/large_volume]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from measure import measured

LOG = logging.getLogger("large_volume")
REPOSITORY = Path(__file__).resolve().parents[1]
FIELD_OF_VIEW_MM = (409.6, 409.6, 400.0)  # 512 x 512 x 400 voxels of 0.8 x 0.8 x 1.0 mm
BASE_FILTERS = 16


def prepare_scan(work: Path, shape: tuple[int, int, int]) -> tuple[Path, Path, float]:
    """The large phantom's DICOM series and reference label map (reused when present)."""
    from medseg.demo.dicom_writer import write_dicom_series
    from medseg.demo.large_phantom import make_large_phantom
    from medseg.io.nifti import write_nifti

    folder = work / f"scan_{'x'.join(map(str, shape))}"
    dicom, reference = folder / "dicom", folder / "labels.nii.gz"
    if reference.exists():
        return dicom, reference, 0.0
    start = time.perf_counter()
    ct, labels, _ = make_large_phantom(seed=0, shape=shape, spacing_mm=spacing_of(shape))
    # InstanceNumber in slice order, as scanners write it: MONAI's PydicomReader stacks the
    # slices by InstanceNumber (medseg sorts them by position either way)
    write_dicom_series(
        ct,
        dicom,
        series_description="large phantom",
        patient_id="PHANTOM-LARGE",
        shuffle_instance_numbers=False,
        workers=2,
    )
    write_nifti(labels, reference)
    return dicom, reference, time.perf_counter() - start


def spacing_of(shape: tuple[int, int, int]) -> tuple[float, float, float]:
    """Voxel size of ``shape`` over the full-size scan's field of view (a smaller shape is the
    same anatomy, coarser)."""
    x, y, z = (fov / n for fov, n in zip(FIELD_OF_VIEW_MM, shape, strict=True))
    return x, y, z


def register_model(
    work: Path, classes: int, patch: list[int], tracking: str, *, spacing_mm: float
) -> str:
    """A random 3D U-Net (seed 0) with ``classes`` outputs for the phantom's CT plan, logged
    and registered; its ``models:/`` URI."""
    from medseg.demo.large_phantom import phantom_ct_plan

    names = {value: f"structure_{value:03d}" for value in range(classes)}
    names[0] = "background"
    plan = phantom_ct_plan(names, patch, target_spacing_mm=spacing_mm)
    return register_random_unet(plan, "3d", f"bench-large-{classes}", tracking)


def register_random_unet(plan: Any, configuration: str, name: str, tracking: str) -> str:
    """A random 3D U-Net (seed 0) for ``plan``'s ``configuration``, logged and registered as
    ``name``; its ``models:/`` URI."""
    import torch

    from medseg.models import build_network, network_arguments
    from medseg.tracking.packaging import log_segmentation_model
    from medseg.tracking.runs import RunTracker

    torch.manual_seed(0)
    layout = plan.configurations[configuration]
    arguments = network_arguments(
        architecture="unet",
        in_channels=1,
        num_classes=len(plan.label_names),
        configuration=layout.model_dump(),
        base_filters=BASE_FILTERS,
    )
    network = build_network(**arguments).eval()
    with RunTracker(tracking).start(experiment="bench-large", run_name=name, tags={}):
        info = log_segmentation_model(
            network,
            factory="medseg.models:build_network",
            factory_kwargs=arguments,
            plan=plan.model_dump(mode="json") | {"train_configuration": configuration},
            labels=plan.label_names,
            input_example=np.zeros((1, 1, *layout.patch_size), np.float32),
            registered_model_name=name,
        )
    return f"models:/{name}/{info.registered_model_version}"


def monai_path(arguments: argparse.Namespace) -> None:
    """MONAI's standard inference of one DICOM series (run in its own process)."""
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import (
        Compose,
        LoadImage,
        Orientation,
        SaveImage,
        ScaleIntensityRange,
        Spacing,
    )

    from medseg.infer.predictor import load_packaged_model

    torch.set_num_threads(os.cpu_count() or 1)
    step = StepLog()
    model = load_packaged_model(arguments.model, tracking_uri=arguments.tracking_uri)
    network, plan = model.members[0].network, model.plan
    norm = plan.normalization
    assert norm.clip_low is not None and norm.clip_high is not None
    assert norm.mean is not None and norm.std is not None
    image = LoadImage(reader="PydicomReader", image_only=True, ensure_channel_first=True)(
        arguments.dicom
    )
    spatial = Compose(
        [Orientation(axcodes="RAS"), Spacing(pixdim=plan.target_spacing, mode="bilinear")]
    )
    scale = ScaleIntensityRange(
        a_min=norm.clip_low,
        a_max=norm.clip_high,
        b_min=(norm.clip_low - norm.mean) / norm.std,
        b_max=(norm.clip_high - norm.mean) / norm.std,
        clip=True,
    )
    step("loaded", tuple(image.shape))
    resampled = spatial(image)
    inputs = scale(resampled)
    step("resampled and scaled", tuple(inputs.shape))
    with torch.inference_mode():
        logits = sliding_window_inference(
            inputs[None],
            roi_size=plan.configurations["3d"].patch_size,
            sw_batch_size=arguments.sw_batch_size,
            predictor=network,
            overlap=0.5,
            mode="gaussian",
            sigma_scale=0.125,
        )
        step("sliding window", tuple(logits.shape))
        probabilities = torch.softmax(logits[0], dim=0)
        del logits
        step("softmax")
        probabilities.applied_operations = list(resampled.applied_operations)
        probabilities.meta = dict(resampled.meta)
        restored = spatial.inverse(probabilities)
        del probabilities
        step("inverse spacing", tuple(restored.shape))
        labels = torch.argmax(restored, dim=0, keepdim=True).to(torch.uint8)
        step("argmax")
    SaveImage(output_dir=arguments.out, output_postfix="", separate_folder=False, print_log=False)(
        labels, meta_data=restored.meta
    )
    step("saved")


class StepLog:
    """Logs each step of the MONAI path: seconds since the start, resident MB now and at peak."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, name: str, shape: tuple[int, ...] | None = None) -> None:
        status = Path("/proc/self/status").read_text()
        rss = {k: int(v.split()[0]) // 1024 for k, v in re.findall(r"(VmRSS|VmHWM):(.*)", status)}
        LOG.info(
            "%s%s: %.1f s, %d MB resident, peak %d MB",
            name,
            f" {shape}" if shape else "",
            time.perf_counter() - self.start,
            rss["VmRSS"],
            rss["VmHWM"],
        )


def agreement(first: Path, second: Path) -> float:
    """Fraction of voxels with the same label (both read in closest-RAS order)."""
    from medseg.io.formats import read_volume

    a, b = read_volume(first).to_closest_ras(), read_volume(second).to_closest_ras()
    if a.shape != b.shape:
        return float("nan")
    return float(np.mean(np.asarray(a.array) == np.asarray(b.array)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    inner = sub.add_parser("monai-path", help="(internal) MONAI's inference of one series")
    inner.add_argument("--dicom", required=True)
    inner.add_argument("--model", required=True)
    inner.add_argument("--tracking-uri", required=True)
    inner.add_argument("--sw-batch-size", type=int, default=1)
    inner.add_argument("--out", required=True)
    parser.add_argument("--classes", type=int, nargs="+", default=[4, 16, 118])
    parser.add_argument("--backends", nargs="+", default=["torch", "openvino"])
    parser.add_argument("--monai-batch", type=int, nargs="*", default=[1, 4])
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 400])
    parser.add_argument("--patch", type=int, nargs=3, default=[96, 96, 96])
    parser.add_argument("--target-spacing-mm", type=float, default=1.5)
    parser.add_argument("--memory-cap-gb", type=float, default=20.0)
    parser.add_argument("--work", type=Path, default=REPOSITORY / "bench/_work/large_volume")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if arguments.command == "monai-path":
        monai_path(arguments)
        return
    compare(arguments)


def compare(arguments: argparse.Namespace) -> None:
    """Every class count through medseg (each backend) and MONAI (each sw_batch_size)."""
    work = arguments.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    dicom, reference, scan_seconds = prepare_scan(work, tuple(arguments.shape))
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    cap = arguments.memory_cap_gb * 1024
    rows: list[dict[str, Any]] = []
    for classes in arguments.classes:
        uri = register_model(
            work, classes, arguments.patch, tracking, spacing_mm=arguments.target_spacing_mm
        )
        medseg_labels: Path | None = None
        for backend in arguments.backends:
            out = work / f"medseg_{classes}_{backend}"
            # --verbose: the log says how long the DICOM SEG took (dicom_seg_timing)
            command = [sys.executable, "-m", "medseg", "--verbose", "predict", "--model", uri]
            command += [str(dicom)]
            command += ["--out", str(out), "--tracking-uri", tracking, "--overlap", "0.5"]
            command += ["--backend", backend, "--batch-size", "1", "--case-ids", "folder"]
            row = {"path": "medseg", "classes": classes, "backend": backend}
            row |= measured(command, log=out.with_suffix(".log"), cap_mb=cap)
            row |= dicom_seg_timing(out.with_suffix(".log"))
            found = sorted(out.glob("*.nii.gz"))
            if found and backend == "torch":
                medseg_labels = found[0]
            elif found and medseg_labels is not None:  # an exported backend against torch
                row["agreement_with_torch"] = round(agreement(found[0], medseg_labels), 6)
            segs = sorted(out.glob("*_seg.dcm"))
            row["dicom_seg_mb"] = round(segs[0].stat().st_size / 2**20, 1) if segs else None
            rows.append(row)
        for batch in arguments.monai_batch:
            out = work / f"monai_{classes}_b{batch}"
            command = [sys.executable, __file__, "monai-path", "--dicom", str(dicom)]
            command += ["--model", uri, "--tracking-uri", tracking, "--out", str(out)]
            command += ["--sw-batch-size", str(batch)]
            row = {"path": "monai", "classes": classes, "sw_batch_size": batch}
            row |= measured(command, log=out.with_suffix(".log"), cap_mb=cap)
            found = sorted(out.glob("*.nii.gz"))
            if found and medseg_labels is not None:
                row["agreement_with_medseg"] = round(agreement(found[0], medseg_labels), 6)
            rows.append(row)
        (work / "results.json").write_text(json.dumps(rows, indent=2))
    report = {
        "scan": {
            "shape": arguments.shape,
            "spacing_mm": spacing_of(tuple(arguments.shape)),
            "reference": str(reference),
        },
        "scan_seconds": round(scan_seconds, 1),
        "patch": arguments.patch,
        "base_filters": BASE_FILTERS,
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "rows": rows,
    }
    (work / "results.json").write_text(json.dumps(report, indent=2))
    table = markdown(rows)
    (work / "results.md").write_text(table + "\n")
    print(table)


def dicom_seg_timing(log: Path) -> dict[str, Any]:
    """Segments and seconds of the DICOM SEG a ``medseg --verbose predict`` log reports."""
    text = log.read_text(errors="replace") if log.exists() else ""
    found = re.search(r"wrote DICOM SEG with (\d+) segment\(s\).* in ([\d.]+) s", text)
    if found is None:
        return {}
    return {"dicom_seg_segments": int(found[1]), "dicom_seg_seconds": float(found[2])}


def markdown(rows: list[dict[str, Any]]) -> str:
    """One line per run; a medseg run also gets MONAI's best finished time over its own and
    its peak memory over that MONAI run's (same class count)."""
    lines = [
        "| classes | path | setting | seconds | peak MB | agreement | time: MONAI best / this "
        "| memory: this / MONAI best | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        setting = row.get("backend") or f"sw_batch_size {row.get('sw_batch_size')}"
        agree = row.get("agreement_with_medseg", row.get("agreement_with_torch", ""))
        speedup, memory = "", ""
        best = monai_best(rows, row["classes"])
        if row["path"] == "medseg" and best is not None and row["exit_code"] == 0:
            speedup = f"{best['seconds'] / row['seconds']:.2f}"
            memory = f"{row['peak_mb'] / best['peak_mb']:.2f}"
        note = "stopped at the memory cap" if row["stopped_at_cap"] else ""
        if row["exit_code"] not in (0, None) and not note:
            note = f"exit {row['exit_code']}"
        if "dicom_seg_seconds" in row:
            note = (
                f"DICOM SEG: {row['dicom_seg_segments']} segments, {row['dicom_seg_mb']} MB, "
                f"{row['dicom_seg_seconds']} s {note}"
            ).strip()
        lines.append(
            f"| {row['classes']} | {row['path']} | {setting} | {row['seconds']} | "
            f"{row['peak_mb']} | {agree} | {speedup} | {memory} | {note} |"
        )
    return "\n".join(lines)


def monai_best(rows: list[dict[str, Any]], classes: int) -> dict[str, Any] | None:
    """The fastest MONAI run that finished with ``classes`` classes, if any did."""
    finished = [
        row
        for row in rows
        if row["path"] == "monai" and row["classes"] == classes and row["exit_code"] == 0
    ]
    return min(finished, key=lambda row: row["seconds"], default=None)


if __name__ == "__main__":
    main()
