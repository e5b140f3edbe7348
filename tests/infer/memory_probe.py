"""Peak resident memory of ``predict_scan`` with a randomly initialised 3D U-Net of N output
classes on a phantom CT, in a fresh process (the measure the bounded-memory tests compare):

    python -m tests.infer.memory_probe --classes 64 --slices 300 [--in-memory]

Prints one JSON line: ``growth_mb``, how far the prediction took the resident set above what it
was before (``before_mb``: imports, the scan and the network; Linux's peak ``VmHWM`` reset
just before), ``peak_mb``, the network grid and the number of label values found.
``--in-memory`` keeps every class's probabilities in memory (the store's limit raised), as
medseg did before it streamed them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import medseg.infer.probability_store as probability_store
from medseg.demo.large_phantom import phantom_ct_plan
from medseg.demo.phantom import make_phantom
from medseg.infer.options import PredictionOptions
from medseg.infer.predictor import PackagedModel, predict_scan
from medseg.models import build_network, network_arguments

PATCH = [32, 32, 32]


def status_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (its peak) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    """Start the peak (``VmHWM``) again from the resident set now (Linux ``clear_refs`` 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, required=True)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--in-memory", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.in_memory:
        probability_store.IN_MEMORY_LIMIT_BYTES = 2**40
    else:
        probability_store.IN_MEMORY_LIMIT_BYTES = 0
    scan, _ = make_phantom(seed=0, shape=(80, 80, args.slices), spacing_mm=(0.8, 0.8, 1.0))
    plan = phantom_ct_plan({v: f"structure_{v}" for v in range(args.classes)}, PATCH)
    arguments = network_arguments(
        architecture="unet",
        in_channels=1,
        num_classes=args.classes,
        configuration=plan.configurations["3d"].model_dump(),
        base_filters=8,
    )
    model = PackagedModel.of_network(
        build_network(**arguments).eval(),
        plan=plan,
        configuration="3d",
        label_names=plan.label_names,
    )
    spacing = scan.spacing_mm
    reset_peak()
    before = status_mb("VmRSS")
    labels = predict_scan(scan, model, options=PredictionOptions(overlap=0.5))
    peak = status_mb("VmHWM")
    print(
        json.dumps(
            {
                "growth_mb": round(peak - before, 1),
                "peak_mb": round(peak, 1),
                "before_mb": round(before, 1),
                "grid": [round(n * s / 1.5) for n, s in zip(scan.shape, spacing, strict=True)],
                "labels": len(np.unique(labels.array)),
            }
        )
    )


if __name__ == "__main__":
    main()
