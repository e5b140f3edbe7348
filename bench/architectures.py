"""The classic architectures side by side on MSD hippocampus, same data, same budget.

Plans and preprocesses ``data_manifests/msd_hippocampus.jsonl`` once (bench/hippocampus.py),
then trains every architecture with ``configs/train/hippocampus_<configuration>.yaml`` and the
same wall-clock budget (``--minutes``), each as a child run of one MLflow comparison run.
Each gets the config's ``network:`` options it takes (``deep_supervision`` only where the
network has it, ``max_filters`` not for the FC-DenseNets, which have ``growth_rate`` instead).
The best checkpoint of each is scored on the whole validation split (sliding window, no
test-time augmentation) three ways: the plain argmax, the largest connected component of each
structure, and the dense CRF (medseg.infer.crf, default settings). The comparison run holds
one metric per architecture and post-processing, and the table as ``comparison.md``,
``comparison.csv`` and ``comparison.json``.

    .venv/bin/python bench/architectures.py [--minutes 5] [--configuration 3d]
        [--architectures unet resenc_unet fcdensenet56 ...] [--tracking-uri URI]
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from hippocampus import DEFAULT_DATA_ROOT, REPOSITORY, PreparedHippocampus, prepare_hippocampus

from medseg.evaluate.metrics import confusion_matrix, dice_from_confusion
from medseg.infer.crf import dense_crf
from medseg.infer.options import CrfSettings
from medseg.infer.postprocess import keep_largest_component
from medseg.infer.sliding_window import predict_probabilities
from medseg.models import ARCHITECTURES, build_network
from medseg.preprocess.cache import load_cache
from medseg.tracking.runs import RunTracker
from medseg.train.checkpoint import load_checkpoint
from medseg.train.config import load_train_config
from medseg.train.loop import train

TABLE = (
    "unet",
    "unet_resize",
    "resenc_unet",
    "fcn32s",
    "fcn16s",
    "fcn8s",
    "pspnet",
    "deeplabv3",
    "fcdensenet56",
)
"""The architectures of the table in docs/architectures.md (``--architectures`` by default).
fcdensenet67 and fcdensenet103 can be asked for, but are left out: a 3D training step of
fcdensenet103 takes over 25 times one of the U-Net (docs/architectures.md), too few steps for
the budget to mean anything."""
POSTPROCESSING = ("argmax", "largest_component", "crf")


@dataclass
class Scores:
    """One architecture's row of the comparison."""

    architecture: str
    parameters: int
    train_minutes: float
    steps: int
    # post-processing -> structure -> Dice
    dice: dict[str, dict[str, float]] = field(default_factory=dict)
    inference_seconds_per_case: float = 0.0
    crf_seconds_per_case: float = 0.0
    run_id: str | None = None

    def mean(self, postprocessing: str) -> float:
        values = list(self.dice[postprocessing].values())
        return float(np.mean(values)) if values else float("nan")


def score(
    network: torch.nn.Module, prepared: PreparedHippocampus, configuration: str
) -> tuple[dict[str, dict[str, float]], float, float]:
    """Dice per structure for each post-processing, seconds per case (network, CRF)."""
    plan = prepared.plan
    settings = plan.configurations[configuration]
    num_classes = max(plan.label_names) + 1
    structures = list(range(1, num_classes))
    totals = {name: np.zeros((num_classes, num_classes), np.int64) for name in POSTPROCESSING}
    network_seconds = crf_seconds = 0.0
    cases = load_cache(prepared.cache, prepared.split.val)
    crf = CrfSettings()
    network.eval()
    for case in cases:
        image = torch.from_numpy(np.array(case.image, dtype=np.float32))
        start = time.perf_counter()
        with torch.inference_mode():
            probabilities = predict_probabilities(
                network,
                image,
                patch_size=settings.patch_size,
                num_classes=num_classes,
                overlap=0.5,
                mirror=False,
                slice_axis=settings.slice_axis,
            )
        network_seconds += time.perf_counter() - start
        start = time.perf_counter()
        refined = dense_crf(probabilities, image, spacing_mm=plan.target_spacing, settings=crf)
        crf_seconds += time.perf_counter() - start
        argmax = probabilities.argmax(0).numpy().astype(np.uint8)
        predictions = {
            "argmax": argmax,
            "largest_component": keep_largest_component(argmax, structures),
            "crf": refined.argmax(0).numpy().astype(np.uint8),
        }
        for name, prediction in predictions.items():
            totals[name] += confusion_matrix(prediction, np.asarray(case.label), num_classes)
    dice = {
        name: {
            plan.label_names[label]: round(float(value), 4)
            for label, value in enumerate(dice_from_confusion(total))
            if label > 0
        }
        for name, total in totals.items()
    }
    return dice, network_seconds / len(cases), crf_seconds / len(cases)


def shared_options(architecture: str, network: dict) -> dict:
    """The config's ``network:`` options that ``architecture`` takes (the others, such as
    ``deep_supervision`` for a network without it or ``max_filters`` for an FC-DenseNet, are
    left out), so every architecture gets the same widths where it has them."""
    taken = inspect.signature(ARCHITECTURES[architecture]).parameters
    return {name: value for name, value in network.items() if name in taken}


def run_architecture(
    architecture: str,
    *,
    prepared: PreparedHippocampus,
    configuration: str,
    minutes: float,
    work: Path,
    tracking_uri: str,
    parent_run_id: str,
) -> Scores:
    """Train ``architecture`` for ``minutes`` (a child run) and score its best checkpoint."""
    path = REPOSITORY / f"configs/train/hippocampus_{configuration}.yaml"
    config = load_train_config(
        path,
        max_minutes=minutes,
        architecture=architecture,
        network=shared_options(architecture, load_train_config(path).network),
    )
    trained = train(
        manifest_path=prepared.manifest,
        plan=prepared.plan,
        cache_dir=prepared.cache,
        config=config,
        run_dir=work / f"run_{configuration}_{architecture}",
        tracking_uri=tracking_uri,
        parent_run_id=parent_run_id,
    )
    checkpoint = torch.load(trained.best_checkpoint, weights_only=False)
    network = build_network(**checkpoint["extra"]["network_arguments"])
    load_checkpoint(trained.best_checkpoint, network=network)
    dice, network_seconds, crf_seconds = score(network, prepared, configuration)
    return Scores(
        architecture=architecture,
        parameters=sum(p.numel() for p in network.parameters()),
        train_minutes=round(trained.state.elapsed_seconds / 60, 2),
        steps=trained.state.step,
        dice=dice,
        inference_seconds_per_case=round(network_seconds, 3),
        crf_seconds_per_case=round(crf_seconds, 3),
        run_id=trained.run_id,
    )


def table(rows: list[Scores], structures: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison (Dice of the plain argmax per structure)."""
    header = [
        "architecture",
        "parameters",
        "steps",
        "train min",
        *[f"Dice {name}" for name in structures],
        "mean Dice",
        "+ largest component",
        "+ CRF",
        "inference s/case",
        "CRF s/case",
    ]
    lines = [
        [
            row.architecture,
            f"{row.parameters:,}",
            str(row.steps),
            f"{row.train_minutes:.1f}",
            *[f"{row.dice['argmax'][name]:.4f}" for name in structures],
            f"{row.mean('argmax'):.4f}",
            f"{row.mean('largest_component'):.4f}",
            f"{row.mean('crf'):.4f}",
            f"{row.inference_seconds_per_case:.3f}",
            f"{row.crf_seconds_per_case:.3f}",
        ]
        for row in rows
    ]
    return header, lines


def write_tables(rows: list[Scores], structures: list[str], folder: Path) -> list[Path]:
    """``comparison.md``, ``.csv`` and ``.json`` in ``folder``."""
    header, lines = table(rows, structures)
    markdown = folder / "comparison.md"
    markdown.write_text(
        "| "
        + " | ".join(header)
        + " |\n| "
        + " | ".join("---" for _ in header)
        + " |\n"
        + "".join("| " + " | ".join(line) + " |\n" for line in lines)
    )
    with (folder / "comparison.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(lines)
    (folder / "comparison.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return [markdown, folder / "comparison.csv", folder / "comparison.json"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="Budget per architecture.")
    parser.add_argument("--configuration", choices=("3d", "2d"), default="3d")
    parser.add_argument(
        "--architectures",
        nargs="+",
        choices=list(ARCHITECTURES),
        default=list(TABLE),
        metavar="ARCHITECTURE",
        help=f"Rows to train (default: {' '.join(TABLE)}); any of: {' '.join(ARCHITECTURES)}.",
    )
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--work", type=Path, default=REPOSITORY / "bench/_work/architectures")
    parser.add_argument("--tracking-uri", help="Default: SQLite in the work folder.")
    args = parser.parse_args()
    prepared = prepare_hippocampus(args.data_root, args.work)
    tracking_uri = args.tracking_uri or f"sqlite:///{args.work.resolve() / 'mlflow.db'}"
    structures = [prepared.plan.label_names[k] for k in sorted(prepared.plan.label_names) if k]
    rows: list[Scores] = []
    tracker = RunTracker(tracking_uri)
    with tracker.start(
        experiment="architecture-comparison",
        run_name=f"hippocampus-{args.configuration}-{args.minutes:g}min",
        tags={"benchmark": "bench/architectures.py"},
    ):
        tracker.log_params(
            {
                "configuration": args.configuration,
                "minutes_per_architecture": args.minutes,
                "architectures": ",".join(args.architectures),
                "validation_cases": len(prepared.split.val),
                "crf": CrfSettings().model_dump(),
            }
        )
        for architecture in args.architectures:
            row = run_architecture(
                architecture,
                prepared=prepared,
                configuration=args.configuration,
                minutes=args.minutes,
                work=args.work,
                tracking_uri=tracking_uri,
                parent_run_id=tracker.run_id,
            )
            rows.append(row)
            metrics = {f"{architecture}.{p}.mean_dice": row.mean(p) for p in POSTPROCESSING}
            metrics |= {
                f"{architecture}.parameters": row.parameters,
                f"{architecture}.train_minutes": row.train_minutes,
                f"{architecture}.inference_seconds_per_case": row.inference_seconds_per_case,
            }
            tracker.log_metrics(metrics, step=0)
            print(json.dumps(asdict(row)), flush=True)
            for path in write_tables(rows, structures, args.work):
                tracker.log_artifact(path)
    header, lines = table(rows, structures)
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
    print(f"MLflow comparison run {tracker.run_id} in {tracking_uri}")


if __name__ == "__main__":
    main()
