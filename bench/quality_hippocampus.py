"""Quality benchmark: 3D and 2D U-Nets on MSD hippocampus within a CPU time budget.

Imports ``data_manifests/msd_hippocampus.jsonl`` (train/val split in the manifest), plans and
preprocesses once, trains each configuration with ``configs/train/hippocampus_<cfg>.yaml``
for ``--minutes`` (default 30) and reports per-structure and mean Dice of the best checkpoint
on the whole validation split (sliding window, no test-time augmentation), tracked in MLflow
(``<work>/mlflow.db``). Goal (issue 4): mean Dice >= 0.88 for 3D within 30 minutes.

    .venv/bin/python bench/quality_hippocampus.py [--minutes 30] [--configurations 3d 2d]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from hippocampus import DEFAULT_DATA_ROOT, REPOSITORY, prepare_hippocampus

from medseg.models import build_network
from medseg.preprocess.cache import load_cache
from medseg.train.checkpoint import load_checkpoint
from medseg.train.config import load_train_config
from medseg.train.loop import train
from medseg.train.validation import validate


def evaluate(
    best: Path, *, cache: Path, val_ids: list[str], plan, configuration: str, mirror: bool = False
) -> dict:
    """Dice per structure of the best checkpoint on every validation case."""
    arguments = torch.load(best, weights_only=False)["extra"]["network_arguments"]
    network = build_network(**arguments)
    load_checkpoint(best, network=network)
    config = plan.configurations[configuration]
    start = time.perf_counter()
    result = validate(
        network,
        load_cache(cache, val_ids),
        patch_size=config.patch_size,
        num_classes=max(plan.label_names) + 1,
        device=torch.device("cpu"),
        slice_axis=config.slice_axis,
        mirror=mirror,
        mirror_axes=[0],  # the hippocampus configs train with left-right mirroring only
    )
    names = {label: plan.label_names[label] for label in result.dice}
    return {
        "dice": {names[label]: round(value, 4) for label, value in result.dice.items()},
        "mean_dice": round(result.mean_dice, 4),
        "inference_seconds_per_case": round((time.perf_counter() - start) / len(val_ids), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--configurations", nargs="+", default=["3d", "2d"])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--work", type=Path, default=REPOSITORY / "bench/_work/quality")
    args = parser.parse_args()
    prepared = prepare_hippocampus(args.data_root, args.work)
    plan, cache, split = prepared.plan, prepared.cache, prepared.split
    results = {}
    for configuration in args.configurations:
        config = load_train_config(
            REPOSITORY / f"configs/train/hippocampus_{configuration}.yaml", max_minutes=args.minutes
        )
        trained = train(
            manifest_path=prepared.manifest,
            plan=plan,
            cache_dir=cache,
            config=config,
            run_dir=args.work / f"run_{configuration}",
            tracking_uri=f"sqlite:///{args.work / 'mlflow.db'}",
        )
        results[configuration] = {
            "minutes": round(trained.state.elapsed_seconds / 60, 1),
            "steps": trained.state.step,
            "epochs": trained.state.epoch,
            **evaluate(
                trained.best_checkpoint,
                cache=cache,
                val_ids=split.val,
                plan=plan,
                configuration=configuration,
            ),
        }
        print(json.dumps({configuration: results[configuration]}), flush=True)
    (args.work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"{'config':<8}{'minutes':>8}{'steps':>7}{'mean Dice':>11}  per structure")
    for configuration, result in results.items():
        row = f"{configuration:<8}{result['minutes']:>8}{result['steps']:>7}"
        print(f"{row}{result['mean_dice']:>11}  {result['dice']}")
    if "3d" in results:
        verdict = "met" if results["3d"]["mean_dice"] >= 0.88 else "NOT met"
        print(f"goal mean Dice >= 0.88 for 3D within {args.minutes:g} min: {verdict}")


if __name__ == "__main__":
    main()
