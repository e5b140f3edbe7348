"""Benchmark: sliding-window inference, medseg vs MONAI ``sliding_window_inference``.

Same network (a 3D U-Net built from the hippocampus-like plan, seeded random weights), same
volume (a real CT from ``totalsegmentator_ref`` normalized like medseg's CT plan, ~ 244 x 202 x
224 voxels at 1.5 mm), same patch. MONAI runs with its defaults in Gaussian mode
(``overlap=0.25``, ``sw_batch_size=1``, ``sigma_scale=0.125``); medseg runs with the same overlap
and window size on the PyTorch backend and on its exported backends (ONNX Runtime, OpenVINO).
Prints seconds (median of ``--repeats``), the ratio MONAI / medseg and the argmax agreement.
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
from medseg.io.nifti import read_nifti
from medseg.models import build_network
from medseg.preprocess.resample import resample_image, resampled_shape
from medseg.sliding_window import sliding_window_predict

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PATCH = (96, 96, 96)
STRIDES = [[2, 2, 2]] * 4


def volume() -> torch.Tensor:
    """The test CT at 1.5 mm, clipped and z-scored like a CT plan does."""
    scan = read_nifti(
        DATA / "totalsegmentator_ref/tests/reference_files/example_ct.nii.gz"
    ).to_closest_ras()
    shape = resampled_shape(scan.shape, scan.spacing_mm, (1.5, 1.5, 1.5))
    array = resample_image(scan.array.astype(np.float32), shape, order=1)
    array = (np.clip(array, -1000, 1000) - 0.0) / 400.0
    return torch.from_numpy(array[np.newaxis].astype(np.float32))


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
    args = parser.parse_args()
    torch.manual_seed(0)
    network = build_network(
        architecture="unet",
        in_channels=1,
        num_classes=4,
        spatial_dims=3,
        pool_strides=STRIDES,
        base_filters=16,
        max_filters=128,
        deep_supervision=True,
    ).eval()
    image = volume()
    print(f"volume {tuple(image.shape[1:])}, patch {PATCH}, threads {torch.get_num_threads()}")

    def monai() -> torch.Tensor:
        with torch.inference_mode():
            logits = sliding_window_inference(
                image[None],
                PATCH,
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
            patch_size=PATCH,
            in_channels=1,
            batch_size=args.batch_size,
        )
        run = lambda p=predictor: sliding_window_predict(  # noqa: E731
            p, image, patch_size=PATCH, num_classes=4, overlap=0.25, batch_size=args.batch_size
        )
        run()  # warm-up (export/compilation happens on first use)
        seconds, probabilities = timed(run, args.repeats)
        agreement = float((probabilities.argmax(0) == reference_labels).float().mean())
        label = f"medseg {name}"
        print(f"{label:<28}{seconds:>9.2f}{monai_seconds / seconds:>8.2f}{agreement:>11.4%}")


if __name__ == "__main__":
    main()
