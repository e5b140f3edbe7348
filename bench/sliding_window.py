"""Benchmark: sliding-window inference, medseg vs MONAI ``sliding_window_inference``.

Same trained network (the 3D U-Net that ``bench/quality_hippocampus.py`` trains; random
weights with ``--random``), same volume (eight real hippocampus MRs at their native 1 mm, tiled
2 x 2 x 2 into an 80 x 112 x 80 volume that takes many windows), same window (the network's
training patch). MONAI runs with its defaults in Gaussian mode (``overlap=0.25``,
``sw_batch_size=1``, ``sigma_scale=0.125``); medseg runs with the same overlap and window on
the PyTorch backend and its exported backends (ONNX Runtime, OpenVINO), batching
``--batch-size`` windows per call. Argmax agreement is only meaningful for a trained network:
random weights give near-ties everywhere, which any difference in window placement (MONAI
steps from the start, medseg spreads windows evenly) flips. Prints seconds (median of
``--repeats``), the ratio MONAI / medseg and the argmax agreement.
Goal (issue 5): >= 2.5x faster on CPU with argmax agreement >= 99.9%.

    .venv/bin/python bench/sliding_window.py [--repeats 3] [--backends torch openvino]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from medseg.infer.backends import Backend, make_predictor
from medseg.infer.sliding_window import sliding_window_predict
from medseg.io.nifti import read_nifti
from medseg.models import build_network

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CHECKPOINT = Path(__file__).resolve().parent / "_work/quality/run_3d/checkpoints/best.pt"


def network_and_patch(random: bool) -> tuple[torch.nn.Module, tuple[int, ...], int]:
    """The trained network (or a same-shaped random one), its patch and class count."""
    if random or not CHECKPOINT.exists():
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
    payload = torch.load(CHECKPOINT, weights_only=False)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=["torch", "onnxruntime", "openvino"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--cases", nargs=8, default=[f"hippocampus_{n:03d}" for n in (1, 3, 4, 6, 8, 11, 14, 15)]
    )
    parser.add_argument("--random", action="store_true", help="random weights (no agreement goal)")
    parser.add_argument(
        "--placement", default="monai", choices=["monai", "even"], help="medseg window placement"
    )
    args = parser.parse_args()
    network, patch, classes = network_and_patch(args.random)
    image = volume(args.cases)
    print(f"volume {tuple(image.shape[1:])}, window {patch}, threads {torch.get_num_threads()}")

    def monai() -> torch.Tensor:
        with torch.inference_mode():
            logits = sliding_window_inference(
                image[None],
                patch,
                sw_batch_size=1,
                predictor=network,
                overlap=0.25,
                mode="gaussian",
            )
        return torch.softmax(logits, 1)[0]

    monai_seconds, reference = timed(monai, args.repeats)
    reference_labels = reference.argmax(0)
    print(f"{'method':<28}{'seconds':>9}{'ratio':>8}{'agreement':>11}")
    print(f"{'MONAI (defaults, gaussian)':<28}{monai_seconds:>9.2f}{1.0:>8.2f}{1.0:>11.4%}")
    for name in args.backends:
        predictor = make_predictor(
            network,
            backend=Backend(name),
            patch_size=patch,
            in_channels=1,
            batch_size=args.batch_size,
        )
        run = lambda p=predictor: sliding_window_predict(  # noqa: E731
            p,
            image,
            patch_size=patch,
            num_classes=classes,
            overlap=0.25,
            batch_size=args.batch_size,
            placement=args.placement,
        )
        run()  # warm-up (export/compilation happens on first use)
        seconds, probabilities = timed(run, args.repeats)
        agreement = float((probabilities.argmax(0) == reference_labels).float().mean())
        label = f"medseg {name}"
        print(f"{label:<28}{seconds:>9.2f}{monai_seconds / seconds:>8.2f}{agreement:>11.4%}")
        foreground = reference_labels > 0
        if foreground.any():
            dice = (
                2
                * float(((probabilities.argmax(0) > 0) & foreground).sum())
                / float((probabilities.argmax(0) > 0).sum() + foreground.sum())
            )
            print(f"{'':<28}foreground Dice vs MONAI {dice:.4f}")


if __name__ == "__main__":
    main()
