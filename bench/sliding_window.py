"""Benchmark: sliding-window inference, medseg vs MONAI ``sliding_window_inference``.

Same trained network (a medseg checkpoint of the hippocampus 3D U-Net, ``--checkpoint``, e.g.
the one ``make bench-vs-nnunet`` trains; random weights with ``--random``), same volume (eight
real hippocampus MRs at their native 1 mm, tiled 2 x 2 x 2 into an 80 x 112 x 80 volume that
takes many windows), same window (the network's training patch), Gaussian weighting, overlap
0.25. MONAI runs at each ``--monai-batch`` ``sw_batch_size`` (1 is its default), and medseg's
ratio is given against MONAI's best as well as its default. medseg runs on each backend and,
on OpenVINO, each precision this machine offers (bf16 on CPUs with bf16 units; int8 quantized
with NNCF on windows of eight other hippocampus cases); the row marked ``default`` is what
``--backend auto --precision auto`` picks (bf16 only at >= 99.9% agreement with fp32).

Argmax agreement with torch fp32 (medseg's reference) and with MONAI's default is printed; it
is only meaningful for a trained network. The distance to the CPU's limit: the network's FLOPs
per window (``torch.utils.flop_counter``) x windows / seconds, against the FLOP/s this CPU
reaches on the network's costliest convolution alone at the same precision and engine.
Goal (issue 17): >= 3x MONAI at its best settings on the default backend, >= 99.9% agreement.

    .venv/bin/python bench/sliding_window.py [--checkpoint PATH] [--repeats 3]
        [--backends torch onnxruntime openvino] [--precisions fp32 bf16 int8]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn
from torch.nn import functional
from torch.utils.flop_counter import FlopCounterMode

from medseg.infer.auto import MIN_AGREEMENT, cpu_supports_bf16, fastest_backend
from medseg.infer.backends import EXPORT_INT8, Backend, export_onnx, make_predictor
from medseg.infer.quantize import quantize_int8
from medseg.infer.sliding_window import sliding_window_predict, window_starts
from medseg.io.nifti import read_nifti
from medseg.models import build_network

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CHECKPOINT = Path(__file__).resolve().parent / "_work/quality/run_3d/checkpoints/best.pt"


def network_and_patch(
    checkpoint: Path, random: bool
) -> tuple[torch.nn.Module, tuple[int, ...], int]:
    """The trained network (or a same-shaped random one), its patch and class count."""
    if random or not checkpoint.exists():
        torch.manual_seed(0)
        arguments = {
            "architecture": "unet",
            "in_channels": 1,
            "num_classes": 3,
            "spatial_dims": 3,
            "pool_strides": [[2, 2, 2]] * 3,
            "base_filters": 16,
            "max_filters": 128,
        }
        return build_network(**arguments).eval(), (40, 56, 40), 3
    payload = torch.load(checkpoint, weights_only=False)
    arguments = payload["extra"]["network_arguments"]
    network = build_network(**arguments)
    network.load_state_dict(payload["network"])
    return network.eval(), (40, 56, 40), int(arguments["num_classes"])


def volume(cases: list[str]) -> torch.Tensor:
    """Hippocampus MRs at their native 1 mm, each z-scored and fitted into a 40 x 56 x 40 tile,
    tiled 2 x 2 x 2 into one volume that takes many windows (cases as the network knows them)."""
    tiles = []
    for case in cases:
        array = read_nifti(DATA / f"msd_hippocampus/images/{case}.nii.gz").to_closest_ras().array
        array = array.astype(np.float32)
        array = (array - array.mean()) / array.std()
        tile = np.zeros((40, 56, 40), np.float32)
        size = [min(a, t) for a, t in zip(array.shape, tile.shape, strict=True)]
        tile[: size[0], : size[1], : size[2]] = array[: size[0], : size[1], : size[2]]
        tiles.append(tile)
    rows = [np.concatenate(tiles[i : i + 2], axis=0) for i in range(0, 8, 2)]
    planes = [np.concatenate(rows[i : i + 2], axis=1) for i in range(0, 4, 2)]
    return torch.from_numpy(np.concatenate(planes, axis=2)[np.newaxis])


def timed(function, repeats: int) -> tuple[float, torch.Tensor]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def window_flops(network: torch.nn.Module, patch: tuple[int, ...]) -> int:
    """FLOPs of one forward pass of one window (a multiply-add counts 2)."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        network(torch.zeros((1, 1, *patch)))
    return int(counter.get_total_flops())


def costliest_convolution(
    network: torch.nn.Module, patch: tuple[int, ...]
) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The network's convolution with the most FLOPs per window, and its input shape."""
    found: list[tuple[int, torch.nn.Module, tuple[int, ...]]] = []

    def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _: object) -> None:
        with FlopCounterMode(display=False) as counter:  # not module(...): it would hook again
            functional.conv3d(
                inputs[0], module.weight, module.bias, module.stride, module.padding,
                module.dilation, module.groups,
            )  # fmt: skip
        found.append((int(counter.get_total_flops()), module, tuple(inputs[0].shape)))

    hooks = [m.register_forward_hook(record) for m in network.modules() if isinstance(m, nn.Conv3d)]
    try:
        with torch.inference_mode():
            network(torch.zeros((1, 1, *patch)))
    finally:
        for hook in hooks:
            hook.remove()
    _, module, shape = max(found, key=lambda item: item[0])
    return module, shape


def peak_flops(
    convolution: torch.nn.Module, shape: tuple[int, ...], backend: str, precision: str
) -> float:
    """FLOP/s of ``convolution`` alone on a batch of 4 of ``shape`` (its best of 5 runs)."""
    batch = torch.randn((4, *shape[1:]))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        convolution(batch)
    flops = counter.get_total_flops()
    runner = make_predictor(
        convolution,
        backend=Backend(backend),
        precision=precision,
        patch_size=shape[2:],
        in_channels=shape[1],
        batch_size=4,
    )
    with torch.inference_mode():
        runner(batch)  # warm-up
        best = min(_seconds(lambda: runner(batch)) for _ in range(5))
    return flops / best


def _seconds(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def calibration_patches(cases: list[str], patch: tuple[int, ...]) -> list[np.ndarray]:
    """One window per calibration case (each case fills one tile of the patch's size)."""
    tiles = volume(cases).numpy()[0]
    steps = [size // p for size, p in zip(tiles.shape, patch, strict=True)]
    return [
        tiles[None, None, i * patch[0] : (i + 1) * patch[0], j * patch[1] : (j + 1) * patch[1],
              k * patch[2] : (k + 1) * patch[2]].copy()
        for i in range(steps[0]) for j in range(steps[1]) for k in range(steps[2])
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=["torch", "onnxruntime", "openvino"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--monai-batch", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument(
        "--cases", nargs=8, default=[f"hippocampus_{n:03d}" for n in (1, 3, 4, 6, 8, 11, 14, 15)]
    )
    parser.add_argument(
        "--calibration-cases",
        nargs=8,
        default=[f"hippocampus_{n:03d}" for n in (19, 20, 23, 24, 25, 26, 33, 34)],
    )
    parser.add_argument("--random", action="store_true", help="random weights (no agreement goal)")
    parser.add_argument(
        "--placement", default="monai", choices=["monai", "even"], help="medseg window placement"
    )
    args = parser.parse_args()
    network, patch, classes = network_and_patch(args.checkpoint, args.random)
    image = volume(args.cases)
    windows = int(
        np.prod(
            [
                len(window_starts(size, p, overlap=0.25, placement=args.placement))
                for size, p in zip(image.shape[1:], patch, strict=True)
            ]
        )
    )
    flops = window_flops(network, patch) * windows
    print(
        f"volume {tuple(image.shape[1:])}, window {patch}, {windows} windows, "
        f"{flops / 1e9:.1f} GFLOP, threads {torch.get_num_threads()}, "
        f"{'random weights' if args.random else args.checkpoint}, load {os.getloadavg()[0]:.2f}"
    )

    def monai(batch: int) -> torch.Tensor:
        with torch.inference_mode():
            logits = sliding_window_inference(
                image[None], patch, sw_batch_size=batch, predictor=network, overlap=0.25,
                mode="gaussian",
            )  # fmt: skip
        return torch.softmax(logits, 1)[0]

    monai_rows = {
        batch: timed(lambda b=batch: monai(b), args.repeats) for batch in args.monai_batch
    }
    monai_default = monai_rows[1][0] if 1 in monai_rows else max(s for s, _ in monai_rows.values())
    monai_best = min(seconds for seconds, _ in monai_rows.values())
    reference_labels = monai_rows[min(monai_rows)][1].argmax(0)
    line = functools.partial(_line, best=monai_best, default=monai_default, flops=flops)
    print(
        f"{'method':<30}{'seconds':>9}{'x best':>8}{'x dflt':>8}{'agr fp32':>10}"
        f"{'agr MONAI':>11}{'GFLOP/s':>9}{'% peak':>8}"
    )
    for batch, (seconds, _) in monai_rows.items():
        print(line(f"MONAI sw_batch_size {batch}", seconds))
    convolution, shape = costliest_convolution(network, patch)
    fp32_labels: torch.Tensor | None = None
    agreement_bf16 = 0.0
    rows = []
    for backend in args.backends:
        offered = ["fp32"]
        if backend == "openvino":
            offered += [p for p in args.precisions if p == "bf16" and cpu_supports_bf16()]
            offered += [p for p in args.precisions if p == "int8" and find_spec("nncf")]
        for precision in offered:
            exports: dict[str, Path] = {}
            if precision == "int8":
                folder = Path(tempfile.mkdtemp(prefix="bench-int8-"))
                onnx_path = export_onnx(network, patch_size=patch, in_channels=1, cache_dir=folder)
                patches = calibration_patches(args.calibration_cases, patch)
                exports = {EXPORT_INT8: quantize_int8(onnx_path, patches, folder / "int8")}
            predictor = make_predictor(
                network, backend=Backend(backend), precision=precision, patch_size=patch,
                in_channels=1, batch_size=args.batch_size, exports=exports,
            )  # fmt: skip
            run = lambda p=predictor: sliding_window_predict(  # noqa: E731
                p, image, patch_size=patch, num_classes=classes, overlap=0.25,
                batch_size=args.batch_size, placement=args.placement,
            )  # fmt: skip
            run()  # warm-up (export/compilation happens on first use)
            seconds, probabilities = timed(run, args.repeats)
            labels = probabilities.argmax(0)
            if fp32_labels is None:
                fp32_labels = labels  # torch fp32 (the first backend)
            agreement = float((labels == fp32_labels).float().mean())
            if (backend, precision) == ("openvino", "bf16"):
                agreement_bf16 = agreement
            # an int8 convolution alone would need its own calibration: no limit measured
            limit = (
                None if precision == "int8" else peak_flops(convolution, shape, backend, precision)
            )
            rows.append((backend, precision, seconds, agreement, labels, limit))
    default_precision = "bf16" if agreement_bf16 >= MIN_AGREEMENT else "fp32"
    default = (fastest_backend().value, default_precision)
    for backend, precision, seconds, agreement, labels, limit in rows:
        chosen = " (default)" if (backend, precision) == default else ""
        monai_agreement = float((labels == reference_labels).float().mean())
        print(
            line(
                f"medseg {backend} {precision}{chosen}", seconds, agreement, monai_agreement, limit
            )
        )
        if limit:
            print(f"{'':<30}peak of the costliest convolution alone: {limit / 1e9:.1f} GFLOP/s")


def _line(
    label: str,
    seconds: float,
    agreement: float | None = None,
    monai_agreement: float | None = None,
    limit: float | None = None,
    *,
    best: float,
    default: float,
    flops: float,
) -> str:
    """One row: seconds, MONAI best and default / seconds, agreements, GFLOP/s, % of the limit."""
    achieved = flops / seconds
    share = f"{100 * achieved / limit:>7.0f}%" if limit else ""
    agreements = "".join(
        f"{value:>{width}.4%}" if value is not None else " " * width
        for value, width in ((agreement, 10), (monai_agreement, 11))
    )
    return (
        f"{label:<30}{seconds:>9.2f}{best / seconds:>8.2f}{default / seconds:>8.2f}"
        f"{agreements}{achieved / 1e9:>9.1f}{share}"
    )


if __name__ == "__main__":
    main()
