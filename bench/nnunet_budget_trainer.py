"""nnU-Net v2's default trainer with a wall-clock budget, for bench/quality_vs_nnunet.py.

``nnUNetTrainerBudget`` is ``nnUNetTrainer`` (same network, loss, augmentation, batch size,
250 iterations and 50 validation iterations per epoch, checkpoint_best by EMA pseudo Dice) with
two changes that a fixed time budget needs:

* training ends at the first iteration that starts after ``budget_seconds`` (counted from the
  start of ``run_training``: data loader start and dataset unpacking included), also inside an
  epoch; a last partial epoch is not validated; ``checkpoint_final.pth`` is saved as usual;
* the learning rate follows nnU-Net's poly schedule (initial 1e-2, exponent 0.9) over the
  budget's time instead of over 1000 epochs, set before every iteration, so the rate reaches
  zero when the budget ends (as medseg's time-budgeted poly schedule does); with 1000 epochs a
  CPU budget of minutes would stop with the rate still at ~1e-2. (The "Current learning rate"
  line nnU-Net logs at an epoch's start is its epoch schedule's, replaced at the first
  iteration.)

``predict`` is ``nnUNetv2_predict`` with its defaults (checkpoint_final, Gaussian sliding
window with step 0.5, mirroring on the axes the trainer allows), the network built by this class:
``nnUNetv2_predict -tr NAME`` finds a trainer by importing every trainer module of nnunetv2,
and on a CPU-only torch that import fails (the primus trainers import timm, which imports the
PyPI torchvision, a CUDA build whose operators a CPU torch cannot register).

With ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` set (the fold comes from
``splits_final.json`` in the preprocessed dataset folder):

    bench/.venv/bin/python bench/nnunet_budget_trainer.py train DATASET --minutes 30
        [--fold 0] [--threads 2] [--summary training.json]
    bench/.venv/bin/python bench/nnunet_budget_trainer.py predict DATASET --input IMAGES
        --output PREDICTIONS [--fold 0] [--threads 2] [--processes 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

POLY_EXPONENT = 0.9


class nnUNetTrainerBudget(nnUNetTrainer):  # nnU-Net's naming: trainer classes start with nnUNet
    """nnUNetTrainer that stops after ``budget_seconds`` with a poly learning rate over time."""

    budget_seconds: float | None = None  # None: nnU-Net's own 1000-epoch schedule
    iterations_done = 0

    def _learning_rate(self, elapsed: float) -> float:
        assert self.budget_seconds is not None
        progress = min(elapsed / self.budget_seconds, 0.999)
        return self.initial_lr * (1.0 - progress) ** POLY_EXPONENT

    def run_training(self) -> None:
        """nnUNetTrainer.run_training with the budget checked before every iteration."""
        if self.budget_seconds is None:
            super().run_training()
            return
        start = time.monotonic()
        self.on_train_start()
        while self.current_epoch < self.num_epochs:
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = []
            for _ in range(self.num_iterations_per_epoch):
                elapsed = time.monotonic() - start
                if elapsed >= self.budget_seconds:
                    break
                for group in self.optimizer.param_groups:
                    group["lr"] = self._learning_rate(elapsed)
                train_outputs.append(self.train_step(next(self.dataloader_train)))
                self.iterations_done += 1
            if train_outputs:
                self.on_train_epoch_end(train_outputs)
            if len(train_outputs) < self.num_iterations_per_epoch:
                self.print_to_log_file(
                    f"Budget of {self.budget_seconds:.0f} s spent in epoch {self.current_epoch} "
                    f"after {len(train_outputs)} iterations"
                )
                self.current_epoch += 1  # on_train_end stores current_epoch - 1 + 1
                break
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [
                    self.validation_step(next(self.dataloader_val))
                    for _ in range(self.num_val_iterations_per_epoch)
                ]
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
        self.on_train_end()


def train_fold(dataset: str, *, minutes: float, fold: int, configuration: str) -> dict:
    """Train ``fold`` of ``dataset`` on the CPU within ``minutes``; what ran, as a dict."""
    folder = Path(nnUNet_preprocessed) / dataset
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # nnUNetTrainer pops it (nnUNetv2_train sets it)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    trainer = nnUNetTrainerBudget(
        plans=plans,
        configuration=configuration,
        fold=fold,
        dataset_json=dataset_json,
        device=torch.device("cpu"),
    )
    trainer.budget_seconds = minutes * 60.0
    start = time.monotonic()
    trainer.run_training()
    return {
        "trainer": type(trainer).__name__,
        "configuration": configuration,
        "fold": fold,
        "epochs_started": trainer.current_epoch,
        "iterations": trainer.iterations_done,
        "batch_size": trainer.batch_size,
        "patch_size": list(trainer.configuration_manager.patch_size),
        "training_seconds": round(time.monotonic() - start, 1),
        "output_folder": trainer.output_folder,
    }


def predict(
    dataset: str, *, images: Path, output: Path, fold: int, configuration: str, processes: int
) -> None:
    """Segment every ``<case>_0000.nii.gz`` in ``images`` into ``output/<case>.nii.gz`` with
    ``checkpoint_final.pth`` of ``fold``, as nnUNetPredictor.initialize_from_trained_model_folder
    and nnUNetv2_predict's defaults do."""
    folder = (
        Path(nnUNet_results)
        / dataset
        / f"{nnUNetTrainerBudget.__name__}__nnUNetPlans__{configuration}"
    )
    dataset_json = json.loads((folder / "dataset.json").read_text())
    plans = PlansManager(json.loads((folder / "plans.json").read_text()))
    checkpoint = torch.load(
        folder / f"fold_{fold}/checkpoint_final.pth", map_location="cpu", weights_only=False
    )
    configuration_manager = plans.get_configuration(configuration)
    network = nnUNetTrainerBudget.build_network_architecture(
        plans,
        configuration_manager,
        determine_num_input_channels(plans, configuration_manager, dataset_json),
        plans.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False,
    )
    network.load_state_dict(checkpoint["network_weights"])
    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=True,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    predictor.manual_initialization(
        network,
        plans,
        configuration_manager,
        [checkpoint["network_weights"]],
        dataset_json,
        checkpoint["trainer_name"],
        checkpoint["inference_allowed_mirroring_axes"],
    )
    predictor.predict_from_files(
        str(images),
        str(output),
        save_probabilities=False,
        overwrite=True,
        num_processes_preprocessing=processes,
        num_processes_segmentation_export=processes,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="train one fold within --minutes")
    train_parser.add_argument("--minutes", type=float, required=True)
    train_parser.add_argument("--summary", type=Path, help="write what ran here as JSON")
    predict_parser = commands.add_parser("predict", help="segment a folder of images")
    predict_parser.add_argument("--input", type=Path, required=True)
    predict_parser.add_argument("--output", type=Path, required=True)
    predict_parser.add_argument("--processes", type=int, default=2)
    for command in (train_parser, predict_parser):
        command.add_argument("dataset", help="DatasetXXX_Name under nnUNet_preprocessed")
        command.add_argument("--fold", type=int, default=0)
        command.add_argument("--configuration", default="3d_fullres")
        command.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.command == "predict":
        predict(
            args.dataset,
            images=args.input,
            output=args.output,
            fold=args.fold,
            configuration=args.configuration,
            processes=args.processes,
        )
        return
    result = train_fold(
        args.dataset, minutes=args.minutes, fold=args.fold, configuration=args.configuration
    )
    if args.summary:
        args.summary.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
