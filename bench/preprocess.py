"""Benchmark: per-case preprocessing, medseg against nnU-Net v2's own preprocessor, same run.

Both tools start from the NIfTI files on disk and end with the normalized image and the label map
on the target-spacing grid (reorient/transpose, crop to non-zero, resample, normalize, sample
foreground locations). Timed per case in one process, the tools alternating so that they share
cache conditions and whatever else runs on the machine (the load average is printed):

* medseg: ``read_nifti`` (image and label) + ``preprocess_case`` with the plan's label
  resampling (``--label-resampling``, default: the plan default, one-hot linear). The ``+bw s``
  column adds the border-weight map the preprocess stage writes when enabled; nnU-Net has no
  such step, so the ratio uses the time without it.
* nnU-Net v2: ``DefaultPreprocessor.run_case`` (SimpleITKIO reading, the default reader for
  ``.nii.gz``) with plans built here as nnU-Net's default planner writes them: CTNormalization
  with the foreground statistics of medseg's fingerprint (ZScoreNormalization for MR), no mask
  for normalization, ``resample_data_or_seg_to_shape`` with order 3 for the image and order 1
  (one-hot) for the labels, ``order_z`` 0, ``force_separate_z`` None.

Each figure is the median of ``--repeats`` samples; a sample repeats the call until it lasts
0.25 s, so millisecond cases are measured too. One untimed warm-up run per tool (it also gives
the arrays compared), except that a warm-up over 10 s counts as the first sample.

Cases (``--cases``):

* ``ct``: TotalSegmentator's example CT (3 mm, 122 x 101 x 112) upsampled once, under
  ``bench/_work/``, to 0.75 x 0.75 x 1.25 mm (488 x 404 x 269, the size of a 512 x 512 x 200
  CT), image linear, labels one-hot linear, then preprocessed to 1.5 mm. Its label map is
  ``example_seg_fast_force_split`` (61 structures): ``example_seg`` has 30 slices and belongs to
  ``example_ct_sm``, not to ``example_ct``.
* ``ct_nearest``: the same with labels upsampled nearest. They are then constant on 3 mm blocks
  and every 1.5 mm resampling samples block interiors, so any two methods agree (Dice 1): this
  case measures speed only, not label agreement.
* ``hippocampus_NNN``: an MSD hippocampus MR case at its native 1 mm (nothing is resampled) and
  at 0.8 mm (resampling happens).

Agreement: nnU-Net's arrays are mapped to medseg's (X, Y, Z) RAS order (undo
``transpose_forward``, SimpleITK's (k, j, i) -> (i, j, k), then the axis permutation/flips of
``Volume.to_closest_ras``). Shapes may differ by one voxel per axis from rounding; both are then
cut to the common extent (a larger difference is an error). Dice per structure (label value > 0;
nnU-Net's -1 "outside the non-zero region" counts as background); ``img r`` is the correlation of
the two normalized images, a check that the grids line up.

Goals (issue): medseg >= 5x faster than nnU-Net per case; Dice >= 0.98 for every structure.

    bench/.venv/bin/python bench/preprocess.py [--repeats 3] [--cases ct hippocampus_001]
        [--label-resampling onehot_linear] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.metadata
import logging
import math
import os
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import nibabel as nib
import nibabel.orientations as nio
import numpy as np
import torch

from medseg.io.nifti import read_nifti, write_nifti
from medseg.manifest import ManifestRecord
from medseg.preprocess.border_weights import border_weight_map
from medseg.preprocess.case import PreprocessedCase, preprocess_case
from medseg.preprocess.config import LabelResampling, PlanOptions
from medseg.preprocess.fingerprint import DatasetFingerprint, fingerprint_dataset
from medseg.preprocess.plan import Plan, make_plan
from medseg.preprocess.resample import (
    resample_image,
    resample_labels,
    resampled_affine,
    resampled_shape,
)
from medseg.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "_work"
DATA = ROOT.parent / "shared" / "data"
TOTALSEG = DATA / "totalsegmentator_ref" / "tests" / "reference_files"
HIPPOCAMPUS = DATA / "msd_hippocampus"

CT_GRID_MM = (0.75, 0.75, 1.25)  # 488 x 404 x 269: the size class of a 512 x 512 x 200 CT
CT_TARGET_MM = (1.5, 1.5, 1.5)
# How the 3 mm labels reach the 0.75 mm grid: one-hot linear gives the smooth boundaries of a
# label map drawn at 0.75 mm; nearest keeps 3 mm blocks, on which all methods agree (docstring).
CT_CASES = {"ct": LabelResampling.ONEHOT_LINEAR, "ct_nearest": LabelResampling.NEAREST}
HIPPOCAMPUS_TARGETS_MM = ((1.0, 1.0, 1.0), (0.8, 0.8, 0.8))
DEFAULT_CASES = ("ct", "hippocampus_001", "hippocampus_003", "hippocampus_004")
SPEED_GOAL = 5.0
DICE_GOAL = 0.98
LONG_RUN_S = 10.0
MIN_SAMPLE_S = 0.25
NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")

logger = logging.getLogger("bench.preprocess")
T = TypeVar("T")


class BenchError(Exception):
    """A case cannot be benchmarked (missing file, grids that cannot be compared)."""


@dataclass(frozen=True)
class BenchCase:
    """One case at one target spacing."""

    name: str
    image_path: Path
    label_path: Path
    modality: str
    target_spacing: tuple[float, float, float]


@dataclass(frozen=True)
class NnunetSetup:
    """Everything ``DefaultPreprocessor.run_case`` needs for one case."""

    preprocessor: Any
    plans_manager: Any
    configuration: Any
    dataset_json: dict


@dataclass
class CaseResult:
    """Timings and agreement of one case."""

    case: BenchCase
    medseg_s: float
    medseg_bw_s: float
    nnunet_s: float
    dice: dict[int, float]
    medseg_shape: tuple[int, ...]
    nnunet_shape: tuple[int, ...]
    image_r: float

    @property
    def ratio(self) -> float:
        """nnU-Net seconds per medseg second (> 1: medseg is faster)."""
        return self.nnunet_s / self.medseg_s

    @property
    def worst_structure(self) -> tuple[int, float]:
        """(label value, Dice) of the structure that agrees least; (0, 1.0) without any."""
        if not self.dice:
            return 0, 1.0
        value = min(self.dice, key=self.dice.__getitem__)
        return value, self.dice[value]


# --- cases -------------------------------------------------------------------------------------


def ct_files(label_resampling: LabelResampling) -> tuple[Path, Path]:
    """The example CT and its labels upsampled to ``CT_GRID_MM``, written once under _work."""
    folder = WORK / f"ct_0.75mm_labels_{label_resampling.value}"
    image_path, label_path = folder / "image.nii.gz", folder / "label.nii.gz"
    if (folder / ".complete").exists():
        return image_path, label_path
    logger.info("writing the upsampled CT case to %s (once)", folder)
    image = read_nifti(TOTALSEG / "example_ct.nii.gz").to_closest_ras()
    label = read_nifti(TOTALSEG / "example_seg_fast_force_split.nii.gz").to_closest_ras()
    if not label.same_grid(image):
        raise BenchError("example_ct and example_seg_fast_force_split are not on one grid")
    shape = resampled_shape(image.shape[:3], image.spacing_mm, CT_GRID_MM)
    affine = resampled_affine(image.affine_ras, image.shape[:3], shape)
    hounsfield = np.rint(resample_image(image.array, shape, order=1)).astype(np.int16)
    labels = resample_labels(label.array, shape, mode=label_resampling).astype(np.uint8)
    write_nifti(Volume(hounsfield, affine), image_path)
    write_nifti(Volume(labels, affine), label_path)
    (folder / ".complete").touch()
    return image_path, label_path


def bench_cases(names: Sequence[str]) -> list[BenchCase]:
    """``ct``, ``ct_nearest`` and hippocampus ids (each at every ``HIPPOCAMPUS_TARGETS_MM``)."""
    cases: list[BenchCase] = []
    for name in names:
        if name in CT_CASES:
            image, label = ct_files(CT_CASES[name])
            cases.append(BenchCase(name, image, label, "CT", CT_TARGET_MM))
            continue
        image = HIPPOCAMPUS / "images" / f"{name}.nii.gz"
        label = HIPPOCAMPUS / "labels" / f"{name}.nii.gz"
        for path in (image, label):
            if not path.is_file():
                raise BenchError(
                    f"{name}: {path} not found (cases: ct, ct_nearest, hippocampus_NNN)"
                )
        cases.extend(BenchCase(name, image, label, "MR", t) for t in HIPPOCAMPUS_TARGETS_MM)
    return cases


def case_fingerprint(case: BenchCase) -> DatasetFingerprint:
    """medseg's fingerprint of a one-case dataset (foreground intensity statistics, spacing)."""
    record = ManifestRecord(
        case_id=case.name,
        image=str(case.image_path),
        label=str(case.label_path),
        sha256="",
        label_sha256=None,
        modality=case.modality,
        shape=[],
        spacing=[],
        source="bench",
        split=None,
    )
    return fingerprint_dataset([record], manifest_path=WORK / "bench.jsonl", data_root=Path("/"))


# --- medseg ------------------------------------------------------------------------------------


def medseg_plan(
    fingerprint: DatasetFingerprint, case: BenchCase, *, label_resampling: LabelResampling
) -> Plan:
    """medseg's plan for the case with the benchmark's target spacing."""
    options = PlanOptions(target_spacing=case.target_spacing, label_resampling=label_resampling)
    names = {v: "background" if v == 0 else f"label_{v}" for v in fingerprint.label_values}
    return make_plan(fingerprint, options=options, label_names=names, manifest_sha256="0" * 64)


def run_medseg(case: BenchCase, plan: Plan, *, border_weights: bool) -> PreprocessedCase:
    """Read the files and preprocess them as the preprocess stage does."""
    image = read_nifti(case.image_path)
    label = read_nifti(case.label_path)
    result = preprocess_case(image, label, plan, case_id=case.name)
    if border_weights and result.label is not None:
        options = plan.border_weights
        border_weight_map(
            result.label,
            spacing_mm=plan.target_spacing,
            w0=options.w0,
            sigma_voxels=options.sigma_voxels,
            class_balance=options.class_balance,
        )
    return result


# --- nnU-Net -----------------------------------------------------------------------------------


def point_nnunet_at(scratch: Path) -> None:
    """Point nnU-Net's data folders (environment variables) at throw-away folders if unset."""
    for variable in NNUNET_FOLDERS:
        os.environ.setdefault(variable, str(scratch / variable))


def nnunet_axes(case: BenchCase) -> tuple[list[int], list[float]]:
    """nnU-Net's ``transpose_forward`` and the target spacing in its (transposed) axis order.

    SimpleITK's array axes are the file's voxel axes reversed; the planner puts the axis with the
    coarsest target spacing first.
    """
    file_to_ras = nio.io_orientation(nib.load(case.image_path).affine)[:, 0].astype(int)
    file_target = [case.target_spacing[axis] for axis in file_to_ras]
    sitk_target = file_target[::-1]
    coarsest = int(np.argmax(sitk_target))
    transpose_forward = [coarsest] + [a for a in range(3) if a != coarsest]
    return transpose_forward, [sitk_target[a] for a in transpose_forward]


def nnunet_plans(
    fingerprint: DatasetFingerprint, case: BenchCase, plan: Plan
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A minimal nnU-Net v2 plans dict and dataset.json for the case, as its planner makes them."""
    transpose_forward, spacing = nnunet_axes(case)
    stats = fingerprint.intensity
    resampling = {"order_z": 0, "force_separate_z": None}
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": plan.configurations["3d"].batch_size,
        "patch_size": plan.configurations["3d"].patch_size,
        "median_image_size_in_voxels": plan.median_shape,
        "spacing": spacing,
        "normalization_schemes": [
            "CTNormalization" if case.modality == "CT" else "ZScoreNormalization"
        ],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, **resampling},
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, **resampling},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, **resampling},
        "batch_dice": False,
        # not used by preprocessing; present so nnU-Net does not take these for old-format plans
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {},
            "_kw_requires_import": [],
        },
    }
    plans = {
        "dataset_name": "Dataset999_MedsegBench",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": spacing,
        "original_median_shape_after_transp": plan.median_shape,
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": transpose_forward,
        "transpose_backward": [transpose_forward.index(a) for a in range(3)],
        "configurations": {"3d_fullres": configuration},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": stats.maximum,
                "mean": stats.mean,
                "median": stats.percentile_50_0,
                "min": stats.minimum,
                "percentile_00_5": stats.percentile_00_5,
                "percentile_99_5": stats.percentile_99_5,
                "std": stats.std,
            }
        },
    }
    labels = {"background": 0} | {f"label_{v}": v for v in fingerprint.label_values if v > 0}
    dataset_json = {
        "channel_names": {"0": case.modality},
        "labels": labels,
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    return plans, dataset_json


def nnunet_setup(fingerprint: DatasetFingerprint, case: BenchCase, plan: Plan) -> NnunetSetup:
    """nnU-Net's preprocessor and plans objects for the case (nnU-Net imported lazily)."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans, dataset_json = nnunet_plans(fingerprint, case, plan)
    plans_manager = PlansManager(plans)
    return NnunetSetup(
        preprocessor=DefaultPreprocessor(verbose=False),
        plans_manager=plans_manager,
        configuration=plans_manager.get_configuration("3d_fullres"),
        dataset_json=dataset_json,
    )


def run_nnunet(case: BenchCase, setup: NnunetSetup) -> tuple[np.ndarray, np.ndarray]:
    """nnU-Net's preprocessing of the case from its files: (image (C, ...), labels (1, ...))."""
    data, seg, _ = setup.preprocessor.run_case(
        [str(case.image_path)],
        str(case.label_path),
        setup.plans_manager,
        setup.configuration,
        setup.dataset_json,
    )
    return data, seg


def nnunet_to_ras(array: np.ndarray, *, case: BenchCase, setup: NnunetSetup) -> np.ndarray:
    """One channel of an nnU-Net array in medseg's (X, Y, Z) closest-RAS voxel order."""
    sitk_order = array[0].transpose(setup.plans_manager.transpose_backward)
    file_order = sitk_order.transpose(2, 1, 0)
    to_ras = nio.ornt_transform(
        nio.io_orientation(nib.load(case.image_path).affine), nio.axcodes2ornt(("R", "A", "S"))
    )
    return nio.apply_orientation(file_order, to_ras)


# --- agreement ---------------------------------------------------------------------------------


def common_extent(ours: np.ndarray, theirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays cut to their common extent; they may differ by one voxel per axis at most."""
    if max(abs(a - b) for a, b in zip(ours.shape, theirs.shape, strict=True)) > 1:
        raise BenchError(f"grids differ by more than one voxel: {ours.shape} vs {theirs.shape}")
    common = tuple(slice(0, min(a, b)) for a, b in zip(ours.shape, theirs.shape, strict=True))
    return ours[common], theirs[common]


def dice_per_structure(ours: np.ndarray, theirs: np.ndarray) -> dict[int, float]:
    """Dice of every label value > 0 present in either map (one bincount confusion matrix)."""
    ours = ours.astype(np.int64).ravel()
    theirs = np.maximum(theirs.astype(np.int64).ravel(), 0)  # nnU-Net's -1 is background
    size = int(max(ours.max(initial=0), theirs.max(initial=0))) + 1
    confusion = np.bincount(ours * size + theirs, minlength=size * size).reshape(size, size)
    ours_total, theirs_total = confusion.sum(axis=1), confusion.sum(axis=0)
    return {
        value: 2.0 * confusion[value, value] / (ours_total[value] + theirs_total[value])
        for value in range(1, size)
        if ours_total[value] + theirs_total[value] > 0
    }


def correlation(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Pearson correlation of two images of one shape."""
    return float(np.corrcoef(ours.ravel(), theirs.ravel())[0, 1])


# --- timing ------------------------------------------------------------------------------------


def timed(function: Callable[[], T]) -> tuple[float, T]:
    """Wall-clock seconds of one call, and its result."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def seconds_per_call(function: Callable[[], object], loops: int) -> float:
    """Mean wall-clock seconds of ``loops`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(loops):
        function()
    return (time.perf_counter() - start) / loops


def median_timings(
    runs: dict[str, Callable[[], object]], warm_up: dict[str, float], *, repeats: int
) -> dict[str, float]:
    """Median seconds per call of each run, the runs alternating within every repeat.

    A run repeats its call until one sample lasts ``MIN_SAMPLE_S`` (millisecond cases are
    otherwise noise); a warm-up longer than ``LONG_RUN_S`` counts as the first sample, since
    the first-call work it also holds is negligible next to it.
    """
    loops = {name: max(1, math.ceil(MIN_SAMPLE_S / warm_up[name])) for name in runs}
    samples = {name: [s] if s > LONG_RUN_S else [] for name, s in warm_up.items()}
    for _ in range(repeats):
        for name, function in runs.items():
            if len(samples[name]) < repeats:
                samples[name].append(seconds_per_call(function, loops[name]))
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_case(case: BenchCase, *, repeats: int, label_resampling: LabelResampling) -> CaseResult:
    """Time both tools on one case (a warm-up run each, then alternating runs); compare."""
    fingerprint = case_fingerprint(case)
    plan = medseg_plan(fingerprint, case, label_resampling=label_resampling)
    setup = nnunet_setup(fingerprint, case, plan)
    runs: dict[str, Callable[[], Any]] = {
        "medseg": lambda: run_medseg(case, plan, border_weights=False),
        "medseg_bw": lambda: run_medseg(case, plan, border_weights=True),
        "nnunet": lambda: run_nnunet(case, setup),
    }
    warm_up = {name: timed(function) for name, function in runs.items()}
    seconds = median_timings(runs, {name: s for name, (s, _) in warm_up.items()}, repeats=repeats)
    ours: PreprocessedCase = warm_up["medseg"][1]
    theirs_image, theirs_labels = warm_up["nnunet"][1]
    assert ours.label is not None
    their_labels_ras = nnunet_to_ras(theirs_labels, case=case, setup=setup)
    labels, their_labels = common_extent(ours.label, their_labels_ras)
    image, their_image = common_extent(
        ours.image[0], nnunet_to_ras(theirs_image, case=case, setup=setup)
    )
    return CaseResult(
        case=case,
        medseg_s=seconds["medseg"],
        medseg_bw_s=seconds["medseg_bw"],
        nnunet_s=seconds["nnunet"],
        dice=dice_per_structure(labels, their_labels),
        medseg_shape=ours.label.shape,
        nnunet_shape=their_labels_ras.shape,
        image_r=correlation(image, their_image),
    )


def profile_medseg(case: BenchCase, *, label_resampling: LabelResampling, top: int = 25) -> None:
    """Print where medseg's time goes on ``case`` (cProfile, one warm run, no border weights)."""
    plan = medseg_plan(case_fingerprint(case), case, label_resampling=label_resampling)
    run_medseg(case, plan, border_weights=False)
    profiler = cProfile.Profile()
    profiler.runcall(run_medseg, case, plan, border_weights=False)
    print(f"\ncProfile of medseg on {case.name} (label resampling {label_resampling.value}):")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(top)


# --- report ------------------------------------------------------------------------------------


def shape_text(shape: Sequence[int]) -> str:
    """``244x202x224``."""
    return "x".join(str(n) for n in shape)


def print_table(results: Sequence[CaseResult]) -> None:
    """The per-case table and whether each goal holds."""
    header = (
        f"{'case':<17}{'target':>7}{'medseg s':>10}{'+bw s':>9}{'nnU-Net s':>11}{'ratio':>8}"
        f"{'Dice min (label)':>19}{'mean':>7}{'n':>4}{'img r':>7}  shape medseg / nnU-Net"
    )
    print(header)
    for r in results:
        value, worst = r.worst_structure
        mean = statistics.mean(r.dice.values()) if r.dice else 1.0
        print(
            f"{r.case.name:<17}{r.case.target_spacing[0]:>7.2f}{r.medseg_s:>10.4f}"
            f"{r.medseg_bw_s:>9.4f}{r.nnunet_s:>11.4f}{r.ratio:>8.1f}"
            f"{f'{worst:.4f} ({value})':>19}{mean:>7.4f}{len(r.dice):>4}{r.image_r:>7.4f}"
            f"  {shape_text(r.medseg_shape)} / {shape_text(r.nnunet_shape)}"
        )
    print()
    for r in results:
        speed = "holds" if r.ratio >= SPEED_GOAL else "FAILS"
        dice = "holds" if r.worst_structure[1] >= DICE_GOAL else "FAILS"
        print(
            f"{r.case.name} @ {r.case.target_spacing[0]:g} mm: medseg >= {SPEED_GOAL:g}x faster "
            f"{speed} ({r.ratio:.1f}x); Dice >= {DICE_GOAL} per structure {dice} "
            f"(min {r.worst_structure[1]:.4f})"
        )


def print_environment() -> None:
    """Versions and threads the figures depend on."""
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("nnunetv2", "torch", "numpy", "scipy", "scikit-image", "SimpleITK")
    )
    print(
        f"{versions}; torch threads {torch.get_num_threads()}, {os.cpu_count()} cores, "
        f"load average {load_average()}"
    )


def load_average() -> str:
    """The 1-minute load average: other jobs on the machine slow both tools alike."""
    return f"{os.getloadavg()[0]:.2f}"


def main() -> None:
    """Parse options, run every case, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per tool and case")
    parser.add_argument(
        "--cases",
        nargs="+",
        default=list(DEFAULT_CASES),
        help="ct, ct_nearest and/or hippocampus case ids, e.g. hippocampus_001",
    )
    parser.add_argument(
        "--label-resampling",
        choices=[m.value for m in LabelResampling],
        default=PlanOptions().label_resampling.value,
        help="medseg's label resampling (plan option); nnU-Net always uses one-hot order 1",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also cProfile medseg on the first case"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    label_resampling = LabelResampling(args.label_resampling)
    with tempfile.TemporaryDirectory(prefix="nnunet-") as scratch:
        point_nnunet_at(Path(scratch))
        cases = bench_cases(args.cases)
        print_environment()
        results = []
        for case in cases:
            logger.info("%s @ %g mm ...", case.name, case.target_spacing[0])
            results.append(
                bench_case(case, repeats=args.repeats, label_resampling=label_resampling)
            )
        print(
            f"medseg label resampling: {label_resampling.value}; median of {args.repeats}; "
            f"load average now {load_average()}"
        )
        print_table(results)
        if args.profile:
            profile_medseg(cases[0], label_resampling=label_resampling)


if __name__ == "__main__":
    main()
