"""Time the ``--structures`` cascade saves on the clinical-scale scan (issue 17).

The scan is ``large_volume.py``'s (the 512 x 512 x 400 phantom series, reused when present),
the networks random 3D U-Nets (seed 0) with the phantom's 118 classes: ``3d`` at 1.5 mm with a
96^3 window, ``3d_lowres`` at 3 mm (the spacing ``plan`` proposes for it) with the same window
(``--spacing-mm`` and ``--patch`` for a quick check at a coarser spacing).
Three runs, each its own process:

* ``full``: ``medseg predict --structures liver`` with the 1.5 mm network on the whole scan
  (what ``--structures`` costs without a cascade);
* ``coarse``: the cascade's first pass as ``predict`` runs it (``cascade_box``: read the series,
  load the 3 mm network, its windows over the whole scan, the liver's box found on its grid);
* ``box``: ``medseg predict --structures liver`` with the 1.5 mm network on the liver's box plus
  ``CASCADE_MARGIN_MM``, cut from the scan where the reference label map has the liver (the
  cascade's second pass, when its first pass finds the liver where it is).

A random coarse network does not find the liver where it is, so the cascade itself is timed in
parts: ``coarse + box`` counts two process starts, model loads and scan reads where the cascade
has one, so the time saved is a lower bound. Results go to ``<work>/cascade.json`` with the
load average before and after: run it on an idle machine.

    .venv/bin/python bench/cascade_time.py [--shape 512 512 400] [--structure liver]
    .venv/bin/python bench/cascade_time.py --first-pass MODEL_URI SERIES_FOLDER  # one pass
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from large_volume import REPOSITORY, prepare_scan, register_random_unet
from measure import measured

LOG = logging.getLogger("cascade_time")


def cascade_plan(spacing_mm: float, patch: list[int]) -> Any:
    """The phantom's CT plan with its 118 classes: ``3d`` at ``spacing_mm``, ``3d_lowres`` at
    twice that (3 mm for 1.5 mm: what ``plan`` proposes)."""
    from medseg.demo.large_phantom import large_anatomy, phantom_ct_plan

    plan = phantom_ct_plan(large_anatomy(0).label_names, patch, target_spacing_mm=spacing_mm)
    lowres = plan.configurations["3d"].model_copy(
        update={"name": "3d_lowres", "target_spacing": [2 * spacing_mm] * 3}
    )
    return plan.model_copy(update={"configurations": {**plan.configurations, "3d_lowres": lowres}})


def write_box(dicom: Path, reference: Path, value: int, out: Path) -> float:
    """The scan cut to structure ``value``'s box in ``reference`` plus the cascade's margin,
    written as NIfTI; the fraction of the scan it keeps."""
    from medseg.infer.cascade import CASCADE_MARGIN_MM, box_fraction, structures_box
    from medseg.io.dicom import read_dicom_series
    from medseg.io.formats import read_volume
    from medseg.io.nifti import write_nifti

    scan = read_dicom_series(dicom).to_closest_ras()
    labels = read_volume(reference).to_closest_ras()
    if not scan.same_grid(labels):
        raise SystemExit(f"{reference}: not on the grid of {dicom}")
    box = structures_box(labels, [value], margin_mm=CASCADE_MARGIN_MM)
    if box is None:
        raise SystemExit(f"{reference}: no voxel of label {value}")
    write_nifti(scan.crop(box), out)
    return box_fraction(box, scan.shape)


def first_pass(uri: str, series: Path, *, structure: str, tracking: str) -> None:
    """The cascade's first pass on a DICOM series, as ``predict`` runs it; prints the share of
    the scan its box keeps (1 when the networks found nothing: the whole scan)."""
    from medseg.infer.cascade import box_fraction
    from medseg.infer.options import PredictionOptions
    from medseg.infer.predictor import cascade_box, load_packaged_model
    from medseg.io.dicom import read_dicom_series

    model = load_packaged_model(uri, tracking_uri=tracking)
    scan = read_dicom_series(series)
    options = PredictionOptions(structures=[structure], overlap=0.5)
    selected = options.selected_structures(model.label_names) or {}
    box = cascade_box(scan, model, selected, options=options, case_id="scan")
    print(
        json.dumps({"box": box, "fraction": 1.0 if box is None else box_fraction(box, scan.shape)})
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-pass", nargs=2, metavar=("MODEL_URI", "SERIES"))
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 400])
    parser.add_argument("--structure", default="liver")
    parser.add_argument("--spacing-mm", type=float, default=1.5, help="of the 3d network")
    parser.add_argument("--patch", type=int, nargs=3, default=[96, 96, 96])
    parser.add_argument("--work", type=Path, default=REPOSITORY / "bench/_work/large_volume")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    work = arguments.work.resolve()
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    if arguments.first_pass:
        uri, series = arguments.first_pass
        first_pass(uri, Path(series), structure=arguments.structure, tracking=tracking)
        return
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    shape = tuple(arguments.shape)
    dicom, reference, _ = prepare_scan(work, shape)
    plan = cascade_plan(arguments.spacing_mm, arguments.patch)
    value = {name: v for v, name in plan.label_names.items()}[arguments.structure]
    full = register_random_unet(plan, "3d", "bench-cascade-3d", tracking)
    coarse = register_random_unet(plan, "3d_lowres", "bench-cascade-3d-lowres", tracking)
    box_scan = work / "cascade_box.nii.gz"
    fraction = write_box(dicom, reference, value, box_scan)
    predict = [sys.executable, "-m", "medseg", "predict", "--tracking-uri", tracking]
    predict += ["--overlap", "0.5", "--backend", "torch", "--structures", arguments.structure]
    predict += ["--case-ids", "folder"]
    first = [sys.executable, __file__, "--work", str(work), "--structure", arguments.structure]
    commands = {
        "full": [*predict, "--model", full, str(dicom), "--out", str(work / "cascade_full")],
        "coarse": [*first, "--first-pass", coarse, str(dicom)],
        "box": [*predict, "--model", full, str(box_scan), "--out", str(work / "cascade_box")],
    }
    rows: dict[str, dict[str, Any]] = {}
    for name, command in commands.items():
        log = work / f"cascade_{name}.log"
        rows[name] = measured(command, log=log, cap_mb=20 * 1024)
    cascade = rows["coarse"]["seconds"] + rows["box"]["seconds"]
    report = {
        "shape": list(shape),
        "spacing_mm": arguments.spacing_mm,
        "patch": arguments.patch,
        "structure": arguments.structure,
        "box_fraction": round(fraction, 4),
        "rows": rows,
        "cascade_seconds_at_most": round(cascade, 1),
        "seconds_saved_at_least": round(rows["full"]["seconds"] - cascade, 1),
        "speedup_at_least": round(rows["full"]["seconds"] / cascade, 2),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    (work / "cascade.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    print(json.dumps(report, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
