"""Quality benchmark: nnU-Net v2 against medseg on MSD hippocampus at the same CPU budget.

Both tools learn from the same cases of ``data_manifests/msd_hippocampus.jsonl``: weights from
the ``train`` split, checkpoint or configuration choices from the ``val`` split; both are scored
by ``medseg evaluate`` on the ``test`` split, which neither sees before (``--test-cases N``: the
first N test cases by case id, for a quick check). Every budget (``--minutes``) trains each row
afresh; every step runs as a subprocess and is timed by its wall clock.

Rows (``--rows``):

* ``nnunet``: nnU-Net v2 (PyPI ``nnunetv2``, this script must run in ``bench/.venv``). The
  manifest's train+val cases become ``Dataset004_Hippocampus`` (imagesTr/labelsTr,
  dataset.json with channel ``MRI``: z-score), ``nnUNetv2_plan_and_preprocess -c 3d_fullres``
  once, a ``splits_final.json`` with one fold (train = manifest train, val = manifest val), then
  configuration 3d_fullres, fold 0, on the CPU with ``nnUNetTrainerBudget``
  (bench/nnunet_budget_trainer.py: nnUNetTrainer that stops at the budget, poly learning rate
  over the budget's time), and nnU-Net's predictor with ``nnUNetv2_predict``'s defaults
  (checkpoint_final, Gaussian sliding window with step 0.5, mirroring test-time augmentation).
* ``medseg-3d``: medseg's single 3D model by its CLI: ``medseg plan`` and ``preprocess`` once,
  ``medseg train --config configs/train/hippocampus_3d.yaml --max-minutes B`` (registered in
  an MLflow SQLite store in the work folder; the best checkpoint on the val split), then
  ``medseg predict --mirror`` on the test images.
* ``medseg-auto``: medseg with automatic choice, the same total budget shared by all its
  training: ``medseg cross-validate`` of ``configs/train/hippocampus_3d.yaml`` and
  ``hippocampus_2d.yaml`` (``--auto-folds``, default 3, over the train+val cases; test cases
  are never in a fold), each fold with a ``--max-minutes`` that leaves room for the folds'
  overhead (:func:`medseg_auto_row`), then ``medseg select --register bench-medseg-auto
  --alias champion`` (the best configuration or ensemble by out-of-fold Dice, and its
  post-processing per structure), then ``medseg predict --mirror`` of the test images with
  ``models:/bench-medseg-auto@champion``. The training time is that of the two
  cross-validations; ``medseg select`` is timed apart.

Planning and preprocessing are done once and reported apart; they are not part of a budget.
Both tools use the machine's 2 cores: nnU-Net with ``nnUNet_n_proc_DA=2`` augmentation workers,
``nnUNet_def_n_proc=2`` for preprocessing and 2 torch threads; medseg with its config's
``threads: 2`` and ``num_workers: 1``. Results go to ``<work>/results.json`` and
``<work>/results.md`` (one line per row and budget: mean and per-structure Dice on the test
cases, wall time of training and of inference), with the nnunetv2 version, the nnU-Net trainer,
and the load average before and after each row, since a shared machine slows training. A later
run on the same cases keeps the earlier rows and replaces those it runs again, so the budgets
can run in separate sittings (``--minutes 30`` now, ``--minutes 60`` later).

    bench/.venv/bin/python bench/quality_vs_nnunet.py [--minutes 30 60]
        [--rows nnunet medseg-3d medseg-auto] [--test-cases N] [--work bench/_work/vs_nnunet]
        [--auto-folds 3] [--auto-fold-overhead 60]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hippocampus import DEFAULT_DATA_ROOT, MANIFEST, REPOSITORY
from nnunet_dataset import (
    NNUNET_DATASET,
    NNUNET_DATASET_ID,
    nnunet_environment,
    nnunet_image_name,
    write_nnunet_dataset,
)

from medseg.manifest import ManifestRecord, read_label_names, read_manifest, resolve

LOG = logging.getLogger("quality_vs_nnunet")
LABELS = MANIFEST.with_name("msd_hippocampus.labels.json")
MEDSEG_CONFIG = REPOSITORY / "configs/train/hippocampus_3d.yaml"
AUTO_CONFIGS = {"3d": MEDSEG_CONFIG, "2d": REPOSITORY / "configs/train/hippocampus_2d.yaml"}
NNUNET_SCRIPT = REPOSITORY / "bench/nnunet_budget_trainer.py"
BIN = Path(sys.executable).parent  # bench/.venv/bin: nnUNetv2_plan_and_preprocess


@dataclass(frozen=True)
class AutoChoice:
    """How the ``medseg-auto`` row shares its budget (see :func:`medseg_auto_row`)."""

    folds: int = 3
    fold_overhead_seconds: float = 60.0
    fold_minutes: float | None = None  # a fixed budget per fold instead (a quick check)


@dataclass(frozen=True)
class Bench:
    """What every row shares: the cases, the work folder and the test files."""

    data_root: Path
    work: Path
    records: list[ManifestRecord]
    test_images: Path  # <case_id>.nii.gz links
    test_labels: Path  # <case_id>.nii.gz links
    nnunet_test_images: Path  # <case_id>_0000.nii.gz links
    auto: AutoChoice

    def split(self, name: str) -> list[ManifestRecord]:
        return [r for r in self.records if r.split == name]


def run_step(command: list[str], *, log: Path, env: dict[str, str] | None = None) -> float:
    """Run ``command`` in its own process group with output to ``log``; its wall time (s).

    The group stays in the benchmark's session, so the session's scheduling autogroup (and the
    priority given to it, see docs/benchmarks.md) covers every step.

    Raises:
        RuntimeError: the command failed (the log's last lines are in the message).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, process_group=0
        )
        try:
            code = process.wait()
        except BaseException:  # SIGTERM (as SystemExit) or Ctrl-C: stop the whole group
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            raise
    seconds = time.perf_counter() - start
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{command[0]} exited {code} (log {log}):\n{tail}")
    LOG.info("%s/%s: %.1f s", log.parent.name, log.stem, seconds)
    return seconds


def medseg_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "medseg", *arguments]


MEDSEG_ENV = {**os.environ, "COLUMNS": "300"}  # console lines unwrapped in the logs


def nnunet_command(*arguments: str) -> list[str]:
    """bench/nnunet_budget_trainer.py with ``arguments`` (train or predict, 2 torch threads)."""
    return [sys.executable, str(NNUNET_SCRIPT), *arguments]


def score(predictions: Path, bench: Bench, out: Path) -> dict[str, Any]:
    """``medseg evaluate`` of ``predictions`` against the test labels: Dice per structure."""
    run_step(
        medseg_command(
            "evaluate",
            str(predictions),
            str(bench.test_labels),
            "--labels",
            str(LABELS),
            "--out",
            str(out),
        ),
        log=out.with_suffix(".log"),
    )
    summary = json.loads((out / "summary.json").read_text())
    if summary["cases"] != len(bench.split("test")) or summary["missing_prediction"]:
        raise RuntimeError(
            f"{out}: evaluated {summary['cases']} cases, missing {summary['missing_prediction']}"
        )
    return {
        "mean_dice": round(summary["mean"]["dice"], 4),
        "dice": {name: round(v["dice"], 4) for name, v in summary["structures"].items()},
        "test_cases": summary["cases"],
    }


# --- nnU-Net -----------------------------------------------------------------------------------


def prepare_nnunet(bench: Bench) -> dict[str, Any]:
    """Raw dataset, plan and preprocess, and the one-fold split (train = manifest train, val =
    manifest val); reused when an earlier run left plans and the same split. Seconds taken."""
    folder = bench.work / "nnunet"
    env = nnunet_environment(folder)
    preprocessed = Path(env["nnUNet_preprocessed"]) / NNUNET_DATASET
    split = [{s: [r.case_id for r in bench.split(s)] for s in ("train", "val")}]
    splits_file = preprocessed / "splits_final.json"
    done = (preprocessed / "nnUNetPlans.json").exists() and splits_file.exists()
    if done and json.loads(splits_file.read_text()) == split:
        LOG.info("nnU-Net: reusing %s", preprocessed)
        return {"seconds": 0.0, "reused": True}
    shutil.rmtree(preprocessed, ignore_errors=True)
    training = []
    for record in bench.split("train") + bench.split("val"):
        image, label = resolve(record, MANIFEST, bench.data_root)
        assert label is not None  # the manifest refuses unlabelled train/val cases
        training.append((record.case_id, image, label))
    start = time.perf_counter()
    write_nnunet_dataset(
        Path(env["nnUNet_raw"]) / NNUNET_DATASET,
        training=training,
        label_names=read_label_names(MANIFEST),
    )
    seconds = time.perf_counter() - start
    seconds += run_step(
        [
            str(BIN / "nnUNetv2_plan_and_preprocess"),
            "-d",
            str(NNUNET_DATASET_ID),
            "-c",
            "3d_fullres",
            "-npfp",
            "2",
            "-np",
            "2",
        ],
        log=folder / "plan_and_preprocess.log",
        env=env,
    )
    splits_file.write_text(json.dumps(split, indent=1))
    return {"seconds": round(seconds, 1), "reused": False}


def nnunet_row(bench: Bench, minutes: float) -> dict[str, Any]:
    """nnU-Net v2 3d_fullres, fold 0, CPU, trained within ``minutes``, on the test cases."""
    folder = bench.work / f"nnunet/{minutes:g}min"
    shutil.rmtree(folder, ignore_errors=True)
    env = nnunet_environment(bench.work / "nnunet")
    env["nnUNet_results"] = str(folder / "results")
    summary = folder / "training.json"
    train_seconds = run_step(
        nnunet_command(
            "train", NNUNET_DATASET, "--minutes", str(minutes), "--summary", str(summary)
        ),
        log=folder / "train.log",
        env=env,
    )
    predictions = folder / "predictions"
    inference_seconds = run_step(
        nnunet_command(
            "predict",
            NNUNET_DATASET,
            "--input",
            str(bench.nnunet_test_images),
            "--output",
            str(predictions),
        ),
        log=folder / "predict.log",
        env=env,
    )
    training = json.loads(summary.read_text())
    return {
        **score(predictions, bench, folder / "evaluation"),
        "train_seconds": round(train_seconds, 1),
        "inference_seconds": round(inference_seconds, 1),
        "details": {
            "nnunetv2": importlib.metadata.version("nnunetv2"),
            **{
                k: training[k]
                for k in (
                    "trainer",
                    "configuration",
                    "fold",
                    "epochs_started",
                    "iterations",
                    "batch_size",
                    "patch_size",
                )
            },
            "checkpoint": "checkpoint_final.pth",
            "tta": "mirroring, all axes",
        },
    }


# --- medseg ------------------------------------------------------------------------------------


def prepare_medseg(bench: Bench) -> dict[str, Any]:
    """``medseg plan`` (train split) and ``medseg preprocess`` (cached cases are skipped)."""
    folder = bench.work / "medseg"
    plan = ["plan", str(MANIFEST), "--data-root", str(bench.data_root)]
    seconds = run_step(
        medseg_command(*plan, "--out", str(folder / "plan.json")), log=folder / "plan.log"
    )
    seconds += run_step(
        medseg_command(
            "preprocess",
            str(MANIFEST),
            "--plan",
            str(folder / "plan.json"),
            "--data-root",
            str(bench.data_root),
            "--out",
            str(folder / "cache"),
        ),
        log=folder / "preprocess.log",
    )
    return {"seconds": round(seconds, 1)}


def medseg_3d_row(bench: Bench, minutes: float) -> dict[str, Any]:
    """medseg's single 3D U-Net trained within ``minutes``, with mirroring TTA, on the test
    cases."""
    folder = bench.work / f"medseg-3d/{minutes:g}min"
    shutil.rmtree(folder, ignore_errors=True)
    tracking = tracking_store(folder)
    model = "bench-medseg-3d"
    train_seconds = run_step(
        medseg_command(
            "train",
            "--manifest",
            str(MANIFEST),
            "--plan",
            str(bench.work / "medseg/plan.json"),
            "--cache",
            str(bench.work / "medseg/cache"),
            "--config",
            str(MEDSEG_CONFIG),
            "--data-root",
            str(bench.data_root),
            "--max-minutes",
            str(minutes),
            "--run-dir",
            str(folder / "run"),
            "--register",
            model,
            "--tracking-uri",
            tracking,
        ),
        log=folder / "train.log",
        env=MEDSEG_ENV,
    )
    predictions = folder / "predictions"
    inference_seconds = medseg_predict(bench, f"models:/{model}@candidate", tracking, predictions)
    return {
        **score(predictions, bench, folder / "evaluation"),
        "train_seconds": round(train_seconds, 1),
        "inference_seconds": round(inference_seconds, 1),
        "details": {
            "config": str(MEDSEG_CONFIG.relative_to(REPOSITORY)),
            "checkpoint": "best on the val split",
            "tta": "mirroring (the config's axes)",
            "trained": _last_line(folder / "train.log", "Training stopped"),
        },
    }


def tracking_store(folder: Path) -> str:
    """The row's own MLflow store: SQLite in its folder."""
    return f"sqlite:///{folder / 'mlflow.db'}"


def medseg_predict(bench: Bench, model_uri: str, tracking: str, predictions: Path) -> float:
    """``medseg predict --mirror --backend torch`` of the test images; seconds.

    The torch backend, as in the rows measured before ``--backend auto`` became the default, so
    every row's inference time is the same network on the same engine.
    """
    return run_step(
        medseg_command(
            "predict",
            str(bench.test_images),
            "--model",
            model_uri,
            "--tracking-uri",
            tracking,
            "--out",
            str(predictions),
            "--mirror",
            "--backend",
            "torch",
            "--case-ids",
            "folder",
        ),
        log=predictions.with_name("predict.log"),
    )


def fold_budget(
    minutes: float,
    *,
    spent: float,
    configurations_left: int,
    folds: int,
    overhead: float,
    what: str,
) -> float:
    """Training seconds of each fold of the next configuration of the medseg-auto row.

    Raises:
        RuntimeError: none are left (names ``what``, the seconds spent and the overhead).
    """
    seconds = (minutes * 60 - spent) / configurations_left / folds - overhead
    if seconds <= 0:
        raise RuntimeError(
            f"medseg-auto, {minutes:g} min: no training time left for the {folds} folds of "
            f"{what} ({spent:.0f} s spent, {overhead:.0f} s overhead per fold)"
        )
    return seconds


def medseg_auto_row(bench: Bench, minutes: float) -> dict[str, Any]:
    """medseg with automatic choice within ``minutes`` of training in all: ``medseg
    cross-validate`` of each configuration of ``AUTO_CONFIGS`` (``bench.auto.folds`` folds
    on the train+val cases), ``medseg select`` of the best configuration or ensemble and its
    post-processing, registered as ``bench-medseg-auto@champion``, then ``medseg predict
    --mirror`` on the test cases.

    The budget is split evenly over the folds still to train: a configuration's folds get
    ``(minutes left) / (configurations left) / folds`` each, less the overhead of a fold
    (startup, the last step and validation past the budget, out-of-fold prediction):
    ``bench.auto.fold_overhead_seconds`` for the first configuration, then the overhead
    measured on the configurations before. ``bench.auto.fold_minutes`` fixes the budget of
    every fold instead (a quick check of the path: the row then ignores ``minutes``).

    Raises:
        RuntimeError: the budget leaves a fold no training time.
    """
    folder = bench.work / f"medseg-auto/{minutes:g}min"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    plan = folder / "plan.json"  # its own copy: splits.json (the folds) goes beside it
    shutil.copyfile(bench.work / "medseg/plan.json", plan)
    tracking = tracking_store(folder)
    folds = bench.auto.folds
    overhead = bench.auto.fold_overhead_seconds
    spent, trained = 0.0, {}
    for index, (name, config) in enumerate(AUTO_CONFIGS.items()):
        fold_seconds = (
            fold_budget(
                minutes,
                spent=spent,
                configurations_left=len(AUTO_CONFIGS) - index,
                folds=folds,
                overhead=overhead,
                what=name,
            )
            if bench.auto.fold_minutes is None
            else bench.auto.fold_minutes * 60
        )
        seconds = run_step(
            medseg_command(
                "cross-validate",
                "--manifest",
                str(MANIFEST),
                "--plan",
                str(plan),
                "--cache",
                str(bench.work / "medseg/cache"),
                "--config",
                str(config),
                "--data-root",
                str(bench.data_root),
                "--folds",
                str(folds),
                "--max-minutes",
                f"{fold_seconds / 60:.4f}",
                "--run-dir",
                str(folder / f"cv_{name}"),
                "--tracking-uri",
                tracking,
            ),
            log=folder / f"cv_{name}.log",
            env=MEDSEG_ENV,
        )
        spent += seconds
        overhead = seconds / folds - fold_seconds
        summary = json.loads((folder / f"cv_{name}/summary.json").read_text())
        trained[name] = {
            "config": str(config.relative_to(REPOSITORY)),
            "fold_minutes": round(fold_seconds / 60, 2),
            "seconds": round(seconds, 1),
            "overhead_seconds_per_fold": round(overhead, 1),
            "cv_mean_dice": round(summary["cv_mean_dice"], 4),
        }
    model = "bench-medseg-auto"
    select_seconds = run_step(
        medseg_command(
            "select",
            *(str(folder / f"cv_{name}") for name in AUTO_CONFIGS),
            "--plan",
            str(plan),
            "--cache",
            str(bench.work / "medseg/cache"),
            "--out",
            str(folder / "selection"),
            "--register",
            model,
            "--alias",
            "champion",
            "--tracking-uri",
            tracking,
        ),
        log=folder / "select.log",
        env=MEDSEG_ENV,
    )
    selection = json.loads((folder / "selection/selection.json").read_text())
    predictions = folder / "predictions"
    inference_seconds = medseg_predict(bench, f"models:/{model}@champion", tracking, predictions)
    return {
        **score(predictions, bench, folder / "evaluation"),
        "train_seconds": round(spent, 1),
        "inference_seconds": round(inference_seconds, 1),
        "details": {
            "folds": folds,
            "fold_budget": "split" if bench.auto.fold_minutes is None else "--auto-fold-minutes",
            "cross_validation": trained,
            "select_seconds": round(select_seconds, 1),
            "chosen": selection["chosen"],
            "cv_mean_dice": round(selection["cv_mean_dice"], 4),
            "postprocessing": {k: v["chosen"] for k, v in selection["postprocessing"].items()},
            "postprocessed_cv_mean_dice": round(selection["postprocessed_cv_mean_dice"], 4),
            "tta": "mirroring (the configs' axes)",
        },
    }


def _last_line(log: Path, prefix: str) -> str:
    lines = [line for line in log.read_text().splitlines() if line.startswith(prefix)]
    return lines[-1] if lines else ""


# Rows: name -> (preparation run once, training + scoring at one budget).
ROWS: dict[str, tuple[Callable[[Bench], dict], Callable[[Bench, float], dict]]] = {
    "nnunet": (prepare_nnunet, nnunet_row),
    "medseg-3d": (prepare_medseg, medseg_3d_row),
    "medseg-auto": (prepare_medseg, medseg_auto_row),
}


def link_test_cases(
    work: Path, records: list[ManifestRecord], data_root: Path, auto: AutoChoice
) -> Bench:
    """The bench, with ``work/test/{images,labels}/<case_id>.nii.gz`` and
    ``work/test/nnunet_images/<case_id>_0000.nii.gz`` linked to the test cases' files.

    Raises:
        ValueError: a test case has no label.
    """
    test = work / "test"
    shutil.rmtree(test, ignore_errors=True)
    bench = Bench(
        data_root, work, records, test / "images", test / "labels", test / "nnunet_images", auto
    )
    for folder in (bench.test_images, bench.test_labels, bench.nnunet_test_images):
        folder.mkdir(parents=True)
    for record in bench.split("test"):
        image, label = resolve(record, MANIFEST, data_root)
        if label is None:
            raise ValueError(f"{MANIFEST}: test case {record.case_id} has no label to score")
        (bench.test_images / f"{record.case_id}.nii.gz").symlink_to(image)
        (bench.nnunet_test_images / nnunet_image_name(record.case_id)).symlink_to(image)
        (bench.test_labels / f"{record.case_id}.nii.gz").symlink_to(label)
    return bench


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def markdown_table(results: list[dict[str, Any]], structures: list[str]) -> str:
    header = ["row", "budget (min)", "mean Dice", *structures, "training (min)", "inference (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in results:
        cells = [
            r["row"],
            f"{r['minutes']:g}",
            f"{r['mean_dice']:.4f}",
            *(f"{r['dice'][s]:.4f}" for s in structures),
            f"{r['train_seconds'] / 60:.1f}",
            f"{r['inference_seconds']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _whole_number(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= {minimum}")
        return int(text)

    return parse


_positive = _whole_number(1)
_at_least_two = _whole_number(2)


def _number(*, above_zero: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (value > 0 if above_zero else value >= 0):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number {'>' if above_zero else '>='} 0"
            )
        return value

    return parse


_seconds = _number(above_zero=False)
_minutes = _number(above_zero=True)


def main() -> None:
    """Run the rows at every budget and print the table; a failed step ends it with
    ``error: <step>: <what>`` and exit code 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[30.0, 60.0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--test-cases", type=_positive, help="only the first N test cases")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--work", type=Path, default=REPOSITORY / "bench/_work/vs_nnunet")
    parser.add_argument(
        "--auto-folds",
        type=_at_least_two,
        default=AutoChoice.folds,
        help="Cross-validation folds of each configuration in the medseg-auto row.",
    )
    parser.add_argument(
        "--auto-fold-overhead",
        type=_seconds,
        default=AutoChoice.fold_overhead_seconds,
        metavar="SECONDS",
        help="Seconds of a fold beyond its training budget (startup, out-of-fold prediction), "
        "taken off the first configuration's folds; later ones use the overhead measured.",
    )
    parser.add_argument(
        "--auto-fold-minutes",
        type=_minutes,
        metavar="MINUTES",
        help="A fixed training budget for every medseg-auto fold instead of sharing --minutes "
        "(a quick check of the path, not a result).",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    records = read_manifest(MANIFEST)
    test = sorted((r for r in records if r.split == "test"), key=lambda r: r.case_id)
    chosen = {r.case_id for r in test[: args.test_cases]}
    records = [r for r in records if r.split != "test" or r.case_id in chosen]
    try:
        if "medseg-auto" in args.rows and args.auto_fold_minutes is None:
            # refuse a budget too small before any row trains
            for minutes in args.minutes:
                fold_budget(
                    minutes,
                    spent=0.0,
                    configurations_left=len(AUTO_CONFIGS),
                    folds=args.auto_folds,
                    overhead=args.auto_fold_overhead,
                    what=next(iter(AUTO_CONFIGS)),
                )
        compare(args, records)
    except (RuntimeError, ValueError) as error:
        sys.exit(f"error: {error}")


def earlier_results(path: Path, cases: dict[str, int]) -> list[dict[str, Any]]:
    """The rows of an earlier run on the same cases (so budgets can run in separate sittings;
    a row and budget run again replaces its earlier line); none if the cases differ."""
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text())
    if earlier.get("cases") != cases:
        LOG.info("%s: other cases (%s), its rows are not kept", path, earlier.get("cases"))
        return []
    return list(earlier["results"])


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def compare(args: argparse.Namespace, records: list[ManifestRecord]) -> None:
    """Prepare each row once, then train and score every row at every budget."""
    auto = AutoChoice(args.auto_folds, args.auto_fold_overhead, args.auto_fold_minutes)
    bench = link_test_cases(args.work.resolve(), records, args.data_root.resolve(), auto)
    work = bench.work
    preparations: dict[Callable[[Bench], dict], dict] = {}
    for row in args.rows:  # once each: medseg-3d and medseg-auto share theirs
        prepare = ROWS[row][0]
        if prepare not in preparations:
            preparations[prepare] = prepare(bench)
    cases = {s: len(bench.split(s)) for s in ("train", "val", "test")}
    kept = earlier_results(work / "results.json", cases)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_average_start": os.getloadavg()},
        "versions": {p: _version(p) for p in ("medseg", "torch", "nnunetv2")},
        "cases": cases,
        "preparation": {prepare.__name__: done for prepare, done in preparations.items()},
        "results": kept,
    }
    for minutes in args.minutes:
        for row in args.rows:
            LOG.info("%s, %g min", row, minutes)
            before = os.getloadavg()
            result = {
                "row": row,
                "minutes": minutes,
                **ROWS[row][1](bench, minutes),
                "load_average_before": before,
                "load_average_after": os.getloadavg(),
            }
            report["results"] = [
                r for r in report["results"] if (r["row"], r["minutes"]) != (row, minutes)
            ] + [result]
            LOG.info("%s", json.dumps(result))
            write_atomically(work / "results.json", json.dumps(report, indent=2))
    report["machine"]["load_average_end"] = os.getloadavg()
    write_atomically(work / "results.json", json.dumps(report, indent=2))
    structures = [n for v, n in sorted(read_label_names(MANIFEST).items()) if v != 0]
    table = markdown_table(report["results"], structures)
    (work / "results.md").write_text(table + "\n")
    print(table)
    print(f"cases {report['cases']}; versions {report['versions']}")


if __name__ == "__main__":
    main()
