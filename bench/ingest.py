"""Benchmark: DICOM series -> volume in memory, medseg vs dcm2niix (+ loading its NIfTI).

Generates a 200-slice 512x512 CT series (uncompressed and JPEG-LS lossless) once under
``bench/_work/``, then times, in the same run, alternating to share cache conditions:

* medseg: ``scan_dicom_files`` + ``load_series`` (header scan, sort, validate, decode,
  modality LUT, reorientation), i.e. ingest up to the volume in memory;
* dcm2niix (PyPI binary) writing an uncompressed NIfTI to a tmpfs-like temp folder, plus
  nibabel loading it into an array.

Prints median seconds of each and the ratio dcm2niix / medseg (> 1 means medseg is faster).
Goal (issue 2): >= 1 on uncompressed, > 1 on JPEG-LS thanks to parallel decoding.

    .venv/bin/python bench/ingest.py [--repeats 5] [--slices 200]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.demo.dicom_writer import TransferSyntax, write_dicom_series
from medseg.io.dicom import load_series, scan_dicom_files
from medseg.io.dicom.pixels import default_workers
from medseg.volume import Volume

WORK = Path(__file__).resolve().parent / "_work"
DCM2NIIX = Path(sys.executable).parent / "dcm2niix"


def synthetic_ct(slices: int) -> Volume:
    """A smooth body-like CT volume in HU with noise (compresses like real CT)."""
    rng = np.random.default_rng(0)
    i, j = np.meshgrid(np.linspace(-1, 1, 512), np.linspace(-1, 1, 512), indexing="ij")
    body = (i / 0.85) ** 2 + (j / 0.65) ** 2 < 1
    array = np.empty((512, 512, slices), np.int16)
    for k in range(slices):
        organ = ((i - 0.2 * np.sin(k / 30)) / 0.3) ** 2 + ((j + 0.1) / 0.25) ** 2 < 1
        slice_hu = np.where(body, 40, -1000) + np.where(organ, 30, 0)
        array[:, :, k] = slice_hu + rng.normal(0, 12, size=(512, 512)).astype(np.int16)
    affine = np.diag([-0.7, -0.7, 1.0, 1.0])
    affine[:3, 3] = [180.0, 180.0, -100.0]
    return Volume(array, affine)


def series_folder(syntax: TransferSyntax, slices: int) -> Path:
    folder = WORK / f"ct_{slices}_{syntax.value}"
    if not (folder / ".complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        write_dicom_series(
            synthetic_ct(slices),
            folder,
            series_description="bench",
            patient_id="BENCH",
            transfer_syntax=syntax,
            workers=2,
            uid_seed=f"bench-{slices}",
        )
        (folder / ".complete").touch()
    return folder


def time_medseg(folder: Path) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    scan = scan_dicom_files(sorted(p for p in folder.iterdir() if p.suffix == ".dcm"))
    volume = load_series(scan.series[0])
    return time.perf_counter() - start, volume.array


def time_dcm2niix(folder: Path) -> tuple[float, np.ndarray]:
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as out:
        start = time.perf_counter()
        subprocess.run(
            [str(DCM2NIIX), "-z", "n", "-b", "n", "-f", "vol", "-o", out, str(folder)],
            check=True,
            capture_output=True,
        )
        image = nib.load(str(Path(out) / "vol.nii"))
        # the fastest correct load: stored int16 plus the header's intercept, staying int16
        array = np.asarray(image.dataobj.get_unscaled())
        slope, intercept = float(image.dataobj.slope), float(image.dataobj.inter)
        assert slope == 1.0, "the synthetic series has an identity rescale slope"
        array += np.int16(intercept)
        return time.perf_counter() - start, array


def _burn(n: int) -> int:
    total = 0
    for value in range(n):
        total += value * value
    return total


def parallel_scaling(workers: int = 2, n: int = 5_000_000) -> float:
    """How much faster ``workers`` processes finish ``workers`` CPU-bound jobs than one does."""
    start = time.perf_counter()
    for _ in range(workers):
        _burn(n)
    serial = time.perf_counter() - start
    with ProcessPoolExecutor(max_workers=workers) as pool:
        start = time.perf_counter()
        list(pool.map(_burn, [n] * workers))
        parallel = time.perf_counter() - start
    return serial / parallel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slices", type=int, default=200)
    args = parser.parse_args()
    print(f"{'series':<28}{'medseg s':>10}{'dcm2niix+load s':>17}{'ratio':>8}")
    for syntax in (TransferSyntax.EXPLICIT_LE, TransferSyntax.JPEGLS_LOSSLESS):
        folder = series_folder(syntax, args.slices)
        time_medseg(folder), time_dcm2niix(folder)  # warm the page cache
        ours, theirs = [], []
        for _ in range(args.repeats):
            seconds, our_array = time_medseg(folder)
            ours.append(seconds)
            seconds, their_array = time_dcm2niix(folder)
            theirs.append(seconds)
        assert our_array.size == their_array.size, "medseg and dcm2niix disagree on the size"
        assert np.array_equal(np.sort(our_array, axis=None), np.sort(their_array, axis=None))
        medseg_s, dcm2niix_s = statistics.median(ours), statistics.median(theirs)
        label = f"{args.slices}x512x512 {syntax.value}"
        print(f"{label:<28}{medseg_s:>10.3f}{dcm2niix_s:>17.3f}{dcm2niix_s / medseg_s:>8.2f}")
    print(
        f"machine: {default_workers()} cores, CPU-bound speed-up with all of them: "
        f"{parallel_scaling(default_workers()):.2f}x"
    )


if __name__ == "__main__":
    main()
