"""The training loop: AMP on CUDA, DDP under torchrun, checkpoints, validation, time budget.

One function, ``train``, runs a whole training job. It reads batches from the preprocessing
cache, augments them on the device, optimizes with a polynomial learning-rate decay (nnU-Net's
exponent 0.9), writes ``checkpoints/last.pt`` every ``checkpoint_every_steps`` steps and at
each epoch end (``resume=True`` continues from it after a kill), validates with the
sliding-window predictor every ``validation.every_epochs`` epochs and keeps the best
checkpoint (``checkpoints/best.pt``). Rank 0 validates, writes checkpoints and talks to
MLflow through ``medseg.tracking``; every rank trains.

SIGTERM/SIGINT (``medseg.shutdown``) stop training at the end of the current step: rank 0
writes ``last.pt`` there (so ``resume=True`` continues from that very step) and the MLflow run
ends as KILLED. Under torchrun the ranks agree after every step whether any of them was
signalled, so all stop after the same step. Validation is not held up: a signal during it
stops it at once, and the run resumes from the last checkpoint (which validates again).
"""

from __future__ import annotations

import hashlib
import logging
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from medseg import shutdown
from medseg.errors import ConfigError
from medseg.infer.agreement import AGREEMENT_CASES
from medseg.infer.quantize import CALIBRATION_PATCHES
from medseg.io.atomic import write_json_atomic
from medseg.losses import DeepSupervisionLoss, LossSpec, SegmentationLoss, build_loss
from medseg.manifest import read_manifest
from medseg.models import build_network, network_arguments
from medseg.models.pretrained import load_encoder_weights
from medseg.preprocess.cache import load_cache
from medseg.preprocess.plan import Plan
from medseg.progress import ProgressCallback
from medseg.train.augment import Augmenter
from medseg.train.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from medseg.train.config import TrainConfig
from medseg.train.data import BatchSpec, make_loader, training_sources
from medseg.train.distributed import (
    DistributedContext,
    any_rank,
    barrier,
    broadcast_flag,
    gather_objects,
    setup_distributed,
    teardown_distributed,
)
from medseg.train.reporting import TrainedNetwork, TrainingReporter
from medseg.train.sampling import BatchSampler
from medseg.train.validation import ValidationResult, validate

logger = logging.getLogger(__name__)

GRADIENT_CLIP_NORM = 12.0
POLY_EXPONENT = 0.9


@dataclass
class TrainResult:
    """What a training job produced."""

    run_dir: Path
    best_checkpoint: Path
    best_mean_dice: float
    state: TrainingState
    stopped_by: str
    model_version: str | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class CaseSplit:
    """Training and validation case ids from the manifest."""

    train: list[str]
    val: list[str]


def split_cases(manifest_path: Path) -> CaseSplit:
    """Labelled train/val cases; with no train split in the manifest, every labelled case that
    is neither validation nor test trains."""
    records = [r for r in read_manifest(manifest_path) if r.label is not None]
    train = [r.case_id for r in records if r.split == "train"]
    val = [r.case_id for r in records if r.split == "val"]
    return CaseSplit(train or [r.case_id for r in records if r.split not in ("val", "test")], val)


def _optimizer(network: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            network.parameters(),
            lr=config.learning_rate,
            momentum=config.momentum,
            nesterov=True,
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(
        network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )


def poly_learning_rate(base: float, progress: float) -> float:
    """nnU-Net's polynomial decay: base * (1 - progress) ** 0.9, progress in [0, 1)."""
    return base * (1.0 - min(max(progress, 0.0), 0.999)) ** POLY_EXPONENT


def training_progress(
    state: TrainingState, *, total_steps: int, budget_seconds: float | None
) -> float:
    """How far the run is: steps done, or time used of the budget, whichever is further.

    With a time budget the learning rate therefore decays to ~0 by the end of the budget even
    when the configured epochs would take longer.
    """
    progress = state.step / total_steps
    if budget_seconds:
        progress = max(progress, state.elapsed_seconds / budget_seconds)
    return progress


def parameter_checksum(network: nn.Module) -> str:
    """SHA-256 of every parameter's bytes: equal on all DDP replicas when they are in sync."""
    digest = hashlib.sha256()
    for parameter in network.state_dict().values():
        digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _seed_everything(seed: int, *, deterministic: bool) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


class _Job:
    """State shared by the steps of one training job (kept small; ``train`` drives it)."""

    def __init__(
        self,
        *,
        plan: Plan,
        config: TrainConfig,
        cache_dir: Path,
        run_dir: Path,
        split: CaseSplit,
        context: DistributedContext,
        tracking_uri: str | None = None,
    ) -> None:
        self.plan, self.config, self.context = plan, config, context
        self.cache_dir, self.run_dir, self.split = cache_dir, run_dir, split
        self.configuration = plan.configurations[config.configuration]
        self.num_classes = plan.num_outputs
        sample = load_cache(cache_dir, split.train[:1])[0]
        self.network_arguments = network_arguments(
            architecture=config.architecture,
            in_channels=int(sample.image.shape[0]),
            num_classes=self.num_classes,
            configuration=self.configuration.model_dump(),
            **config.network,
        )
        self.network = build_network(**self.network_arguments)
        self.encoder_transfer = None
        if config.pretrained_encoder is not None:
            self.encoder_transfer = load_encoder_weights(
                self.network, config.pretrained_encoder, tracking_uri=tracking_uri
            )
        self.network = self.network.to(context.device)
        loss = plan_loss(config, plan)
        self.needs_weights = loss.needs_weights
        if loss.needs_weights and not plan.border_weights.enabled:
            raise ConfigError(
                f"loss {config.loss.model_dump()} needs border-weight maps, but the plan has "
                "border_weights.enabled: false; set it in the plan options and run preprocess again"
            )
        # the network knows whether it returns a list of logits (e.g. a U-Net too shallow for
        # auxiliary heads does not, whatever its options say)
        self.loss = DeepSupervisionLoss(loss) if self.network.deep_supervision else loss
        self.optimizer = _optimizer(self.network, config)
        # CUDA: float16 autocast with gradient scaling. CPU: optional bfloat16 autocast (about
        # 1.6x faster on CPUs with AVX512-BF16; bfloat16 keeps float32's range, so no scaler).
        on_cuda = context.device.type == "cuda"
        self.amp = (config.amp and on_cuda) or (config.cpu_bf16 and not on_cuda)
        self.amp_dtype = torch.float16 if on_cuda else torch.bfloat16
        self.scaler = torch.amp.GradScaler(context.device.type, enabled=self.amp and on_cuda)
        self.checkpoints = run_dir / "checkpoints"
        # test-time mirroring may only flip the axes training mirrored
        self.mirror_axes = config.augmentation.mirror_axes
        self.total_steps = config.epochs * config.steps_per_epoch

    def trained_network(self) -> TrainedNetwork:
        """The network and what rebuilds it, for packaging the model."""
        return TrainedNetwork(
            network=self.network,
            arguments=self.network_arguments,
            patch_size=self.configuration.patch_size,
            mirror_axes=self.mirror_axes,
            slice_axis=self.configuration.slice_axis,
            validation_images=[
                case.image for case in load_cache(self.cache_dir, self.split.val[:AGREEMENT_CASES])
            ],
            calibration_patches=self.calibration_patches() if self.config.int8 else (),
        )

    def calibration_patches(self) -> list[np.ndarray]:
        """``CALIBRATION_PATCHES`` training patches ``(1, C, *patch)`` for int8 quantization,
        drawn as training draws them (foreground oversampled), without augmentation."""
        sampler = BatchSampler(
            training_sources(self.cache_dir, self.split.train, with_weights=False),
            patch_size=self.configuration.patch_size,
            batch_size=1,
            foreground_fraction=self.plan.foreground_fraction,
            slice_axis=self.configuration.slice_axis,
            seed=self.config.seed,
        )
        return [sampler.next_batch().image for _ in range(CALIBRATION_PATCHES)]

    def model(self) -> nn.Module:
        if self.context.distributed:
            ids = [self.context.device.index] if self.context.device.type == "cuda" else None
            return DistributedDataParallel(self.network, device_ids=ids)
        return self.network

    def loader(self, state: TrainingState) -> Iterator[dict[str, torch.Tensor]]:
        spec = BatchSpec(
            patch_size=tuple(self.configuration.patch_size),
            batch_size=self.config.batch_size or self.configuration.batch_size,
            foreground_fraction=self.plan.foreground_fraction,
            slice_axis=self.configuration.slice_axis,
            with_weights=self.needs_weights,
        )
        seed = (self.config.seed, self.context.rank, state.step)
        return make_loader(
            self.cache_dir,
            self.split.train,
            spec=spec,
            seed=seed,
            num_workers=self.config.num_workers,
            pin_memory=self.context.device.type == "cuda",
        )

    def save(self, name: str, state: TrainingState, history: list[dict]) -> Path:
        path = self.checkpoints / name
        save_checkpoint(
            path,
            network=self.network,
            optimizer=self.optimizer,
            scaler=self.scaler,
            state=state,
            extra={"history": history, "network_arguments": self.network_arguments},
        )
        return path

    def validate(self, epoch: int) -> ValidationResult:
        options = self.config.validation
        cases = load_cache(self.cache_dir, self.split.val)[: options.max_cases]
        return validate(
            self.network,
            cases,
            patch_size=self.configuration.patch_size,
            num_classes=self.num_classes,
            device=self.context.device,
            overlap=options.overlap,
            mirror=options.mirror,
            mirror_axes=self.mirror_axes,
            slice_axis=self.configuration.slice_axis,
            pictures_dir=self.run_dir / "pictures" / f"epoch_{epoch:04d}",
            pictures=options.overlay_pictures,
            ignore_label=self.plan.ignore_label,
            regions=self.plan.region_set,
        )


def config_for_plan(config: TrainConfig, plan: Plan) -> TrainConfig:
    """``config`` as it trains on ``plan``: a region-based plan trains ``dice_bce`` (sigmoid
    per region) when the config keeps the default loss (``dice_ce``); the run logs this."""
    default = TrainConfig.model_fields["loss"].get_default(call_default_factory=True)
    if plan.region_set is None or config.loss != default:
        return config
    logger.info("the plan declares regions: training dice_bce (sigmoid per region)")
    return config.model_copy(update={"loss": LossSpec.model_validate("dice_bce")})


def plan_loss(config: TrainConfig, plan: Plan) -> SegmentationLoss:
    """The configured loss (see :func:`config_for_plan`), fitted to the plan's ignore label
    and regions.

    Raises:
        LossConfigError: the configured loss does not fit the plan (softmax terms with
            regions, ``dice_bce`` without).
    """
    regions = plan.region_set
    regions_labels = None if regions is None else [r.labels for r in regions.regions]
    return build_loss(config.loss).ignoring(plan.ignore_label).for_regions(regions_labels)


def _train_step(job: _Job, model: nn.Module, batch: dict, augmenter: Augmenter, lr: float) -> float:
    device = job.context.device
    for group in job.optimizer.param_groups:
        group["lr"] = lr
    weights = batch.get("weights")
    image, label, weights = augmenter(
        image=batch["image"].to(device, non_blocking=True),
        label=batch["label"].to(device, non_blocking=True),
        weights=weights.to(device, non_blocking=True) if weights is not None else None,
    )
    with torch.autocast(device.type, dtype=job.amp_dtype, enabled=job.amp):
        outputs = model(image)
    value = job.loss(outputs, label, weights)
    job.optimizer.zero_grad(set_to_none=True)
    job.scaler.scale(value).backward()
    job.scaler.unscale_(job.optimizer)
    nn.utils.clip_grad_norm_(job.network.parameters(), GRADIENT_CLIP_NORM)
    job.scaler.step(job.optimizer)
    job.scaler.update()
    return float(value.detach())


def train(
    *,
    manifest_path: Path,
    plan: Plan,
    cache_dir: Path,
    config: TrainConfig,
    run_dir: Path,
    resume: bool = False,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
    on_progress: ProgressCallback | None = None,
    split: CaseSplit | None = None,
    fold: int | None = None,
) -> TrainResult:
    """Train one network as configured; see the module docstring for what is written where.

    ``parent_run_id`` nests the MLflow run under that run (a pipeline's parent run, active in
    this thread). ``split`` replaces the manifest's train/val split (a cross-validation fold,
    whose number ``fold`` is then logged with the run).
    """
    config = config_for_plan(config, plan)
    context = setup_distributed()
    try:
        if config.threads:
            torch.set_num_threads(config.threads)
        _seed_everything(config.seed + context.rank, deterministic=config.deterministic)
        split = split or split_cases(manifest_path)
        job = _Job(
            plan=plan,
            config=config,
            cache_dir=cache_dir,
            run_dir=Path(run_dir),
            split=split,
            context=context,
            tracking_uri=tracking_uri,
        )
        state, history = TrainingState(), []
        last = job.checkpoints / "last.pt"
        if resume and last.exists():
            state, extra = load_checkpoint(
                last, network=job.network, optimizer=job.optimizer, scaler=job.scaler
            )
            history = extra.get("history", [])
            logger.info("resuming from step %d (epoch %d)", state.step, state.epoch)
        reporter = TrainingReporter.start(
            enabled=context.is_main,
            tracking_uri=tracking_uri,
            config=config,
            plan=plan,
            manifest_path=manifest_path,
            run_dir=job.run_dir,
            run_id=state.run_id,
            parent_run_id=parent_run_id,
            fold=fold,
        )
        state.run_id = reporter.run_id
        if job.encoder_transfer is not None and not resume:
            reporter.log_encoder_transfer(job.encoder_transfer)
        try:
            stopped_by = _run_epochs(job, state, history, reporter, on_progress)
            checksums = gather_objects(parameter_checksum(job.network), context)
            best = job.checkpoints / "best.pt"
            if context.is_main:
                write_json_atomic(job.run_dir / "replica_checksums.json", checksums)
                if not best.exists():  # no validation split: the last weights are the model
                    job.save("best.pt", state, history)
            barrier(context)
            version = reporter.finish(
                trained=job.trained_network(),
                best_checkpoint=best,
                history=history,
                stopped_by=stopped_by,
            )
        except BaseException:
            reporter.close(failed=True)
            raise
        return TrainResult(
            run_dir=job.run_dir,
            best_checkpoint=best,
            best_mean_dice=state.best_metric,
            state=state,
            stopped_by=stopped_by,
            model_version=version,
            run_id=state.run_id,
        )
    finally:
        teardown_distributed()


def _run_epochs(
    job: _Job,
    state: TrainingState,
    history: list[dict],
    reporter: TrainingReporter,
    on_progress: ProgressCallback | None,
) -> str:
    # Stop signals are held while training and acted on between steps (see the module doc).
    with shutdown.deferred():
        return _train_epochs(job, state, history, reporter, on_progress)


def _train_epochs(
    job: _Job,
    state: TrainingState,
    history: list[dict],
    reporter: TrainingReporter,
    on_progress: ProgressCallback | None,
) -> str:
    config, context = job.config, job.context
    model = job.model().train()
    loader = job.loader(state)
    augmenter = Augmenter(
        config.augmentation,
        seed=config.seed * 1000 + context.rank + state.step,
    )
    session_start = time.monotonic()
    elapsed_before = state.elapsed_seconds
    budget = config.max_minutes * 60 if config.max_minutes else None
    while state.epoch < config.epochs:
        epoch_start, losses = time.monotonic(), []
        while state.step < (state.epoch + 1) * config.steps_per_epoch:
            lr = poly_learning_rate(
                config.learning_rate,
                training_progress(state, total_steps=job.total_steps, budget_seconds=budget),
            )
            losses.append(_train_step(job, model, next(loader), augmenter, lr))
            state.step += 1
            state.elapsed_seconds = elapsed_before + time.monotonic() - session_start
            if on_progress:
                on_progress("Training", state.step, job.total_steps)
            saved = context.is_main and state.step % config.checkpoint_every_steps == 0
            if saved:
                job.save("last.pt", state, history)
            if any_rank(shutdown.requested() is not None, context):
                if context.is_main:
                    last = job.checkpoints / "last.pt"
                    if not saved:
                        job.save("last.pt", state, history)
                    logger.warning("stopped after step %d; %s holds it", state.step, last)
                shutdown.stop(shutdown.requested() or signal.SIGTERM)
            out_of_time = budget is not None and state.elapsed_seconds >= budget
            if broadcast_flag(out_of_time, context):
                break
        state.epoch += 1
        samples = (
            len(losses) * (config.batch_size or job.configuration.batch_size) * context.world_size
        )
        record = {
            "epoch": state.epoch,
            "step": state.step,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "learning_rate": lr,
            "samples_per_second": samples / max(time.monotonic() - epoch_start, 1e-9),
        }
        if (
            context.is_main
            and job.split.val
            and (
                state.epoch % config.validation.every_epochs == 0
                or state.step >= job.total_steps
                or (budget is not None and state.elapsed_seconds >= budget)
            )
        ):
            with shutdown.interruptible():  # minutes on large scans: not held up
                result = job.validate(state.epoch)
            record.update(reporter.validation_metrics(result))
            if result.mean_dice > state.best_metric:
                state.best_metric = result.mean_dice
                job.save("best.pt", state, [*history, record])
            reporter.log_pictures(result.pictures)
        history.append(record)
        if context.is_main:
            job.save("last.pt", state, history)
            reporter.log_epoch(record)
        barrier(context)
        if budget is not None and broadcast_flag(state.elapsed_seconds >= budget, context):
            return "time budget"
    return "epochs"
