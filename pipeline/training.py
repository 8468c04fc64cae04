"""One training loop for every model the pipeline trains (teacher, baseline, distilled student).

The loop trains an *objective*: an ``nn.Module`` whose forward(images, targets) returns (loss,
parts) and whose ``deployable`` attribute is the network to evaluate and ship
(:class:`SupervisedObjective` for plain cross-entropy, a ``Distiller`` for a student). In the
torchvision reference's shape: :class:`TrainLoader` (the batches, reseeded from (seed, epoch) so a
resumed run sees the same batches as an uninterrupted one), :class:`TrainState` (what a checkpoint
holds, saved atomically after every epoch), :func:`train_one_epoch` and :func:`evaluate`.
The same loop runs on CPU, one GPU (mixed precision, channels_last, torch.compile) and under
torchrun with DistributedDataParallel (see pipeline/distributed.py for the conventions).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, update_bn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from pipeline import distributed
from pipeline.artifacts import atomic_torch_save
from pipeline.config import TrainConfig
from pipeline.data.transforms import reseed_augmentation, seed_worker
from pipeline.environment import seed_everything
from pipeline.metrics import ConfusionMatrix
from pipeline.tasks.base import Evaluator
from pipeline.tasks.segmentation import SegmentationEvaluator


class SupervisedObjective(nn.Module):
    """Plain cross-entropy training of one model (per pixel or per image: F.cross_entropy takes both)."""

    def __init__(self, model: nn.Module, ignore_index: int = 255) -> None:
        super().__init__()
        self.model = model
        self.ignore_index = ignore_index

    @property
    def deployable(self) -> nn.Module:
        return self.model

    def forward(self, images: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        loss = F.cross_entropy(self.model(images), targets, ignore_index=self.ignore_index)
        return loss, {"ce": loss}

    def trainable_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        return self.model.parameter_groups()


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    resumed_from_epoch: int = 0
    final_evaluation: "Evaluation | None" = None  # val after the last epoch trained in this call

    @property
    def final_matrix(self) -> ConfusionMatrix | None:
        return self.final_evaluation.matrix if self.final_evaluation else None

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(self.steps, 1)


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and what to change."""


def build_optimizer(objective: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    backbone, head = objective.trainable_groups()
    groups = [
        {"params": [p for p in backbone if p.requires_grad], "lr": cfg.lr},
        {"params": [p for p in head if p.requires_grad], "lr": cfg.lr * cfg.head_lr_mult},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    # The fused kernel updates every parameter in one pass: about 8% of a small model's CPU step.
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def weight_average(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``model``'s weights and buffers (batch-norm statistics too, as
    torchvision's reference ``--model-ema``). Its decay starts low, min(decay, (1 + t) / (10 + t)) after
    t updates (TensorFlow's ExponentialMovingAverage with num_updates), so that in a run of a few
    hundred steps the random initial weights do not linger in the average."""

    @torch.no_grad()
    def update(averaged: list[Tensor], current: list[Tensor], updates: Tensor) -> None:
        done = float(updates)
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1.0 + done) / (10.0 + done)))
        else:  # counters such as num_batches_tracked: the model's own
            for average, value in zip(averaged, current, strict=True):
                average.copy_(value)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def lr_factor(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Per-iteration schedule: linear warm-up, then cosine / poly(0.9) / constant."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.schedule == "poly":
        return (1.0 - progress) ** 0.9
    return 1.0


@dataclass(frozen=True)
class TrainingRuntime:
    """How the loop runs (not what it learns): precision, memory format, compilation, loading."""

    amp: str = "none"  # none | bf16 | fp16 (fp16 adds a GradScaler)
    channels_last: bool = False
    compile: bool = False
    sync_batchnorm: bool = False
    workers: int = 0
    pin_memory: bool = True
    persistent_workers: bool = True
    # A checkpoint holds the whole objective (a distiller's frozen teacher included) and the optimizer:
    # written after every epoch it cost a small student's run a sixth of its time. So: after the first
    # and the last epoch, and in between once this many seconds have passed (0 = every epoch). Where
    # a run resumes changes nothing it learns: each epoch is seeded by its own number.
    checkpoint_seconds: float = 60.0

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)

    def autocast(self, device: torch.device) -> Any:
        dtype = self.amp_dtype
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def images(self, images: Tensor, device: torch.device) -> Tensor:
        images = images.to(device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images


@dataclass
class Evaluation:
    evaluator: Evaluator  # the val figures (mIoU / top-1 ...)
    loss: float  # mean cross-entropy per labelled val pixel or image: moves even while mIoU has not yet

    @property
    def matrix(self) -> ConfusionMatrix:
        """Segmentation's confusion matrix."""
        return self.evaluator.matrix


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, evaluator: Evaluator, device: torch.device,
    runtime: TrainingRuntime | None = None,
) -> Evaluation:
    """``evaluator`` filled with ``model``'s val predictions, and the val loss; under torchrun each
    rank scores its share and the counts are summed over ranks, so every rank returns the whole
    split's figures."""
    runtime = runtime or TrainingRuntime()
    was_training = model.training
    model.eval()
    loss_sum, labelled = 0.0, 0
    ignore_index = evaluator.ignore_index
    for images, targets in distributed_shard(loader):
        with runtime.autocast(device):
            logits = model(runtime.images(images, device)).float()
        on_device = targets.to(device)
        loss_sum += F.cross_entropy(logits, on_device, ignore_index=ignore_index, reduction="sum").item()
        labelled += int((on_device != ignore_index).sum())
        evaluator.update(logits.cpu(), targets)
    model.train(was_training)
    if distributed.world_size() > 1:
        collective = _collective_device(device)
        evaluator.reduce(lambda counts: distributed.all_reduce_sum(counts, collective))
        loss_sum, labelled = distributed.all_reduce_sum(np.array([loss_sum, labelled], dtype=np.float64), collective)
    return Evaluation(evaluator, float(loss_sum) / max(float(labelled), 1.0))


def distributed_shard(loader: DataLoader) -> DataLoader:
    """This rank's every world_size-th val sample (no padding duplicates, unlike DistributedSampler)."""
    size = distributed.world_size()
    if size == 1:
        return loader
    shard = Subset(loader.dataset, range(distributed.rank(), len(loader.dataset), size))
    return DataLoader(shard, batch_size=loader.batch_size, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)


def _collective_device(device: torch.device) -> torch.device:
    return device if device.type == "cuda" else torch.device("cpu")  # nccl needs CUDA tensors, gloo CPU ones


def prepare_for_devices(objective: nn.Module, device: torch.device, runtime: TrainingRuntime, desc: str) -> nn.Module:
    """Move ``objective`` to ``device`` (SyncBatchNorm, memory format) and return the module to call for
    training steps: itself, or wrapped in DistributedDataParallel and/or torch.compile."""
    if runtime.sync_batchnorm and distributed.world_size() > 1:
        if device.type != "cuda":
            raise ValueError(f"{desc}: run.sync_batchnorm needs CUDA (torch's SyncBatchNorm has no CPU kernel); "
                             "set run.sync_batchnorm=false for CPU/gloo runs")
        objective = nn.SyncBatchNorm.convert_sync_batchnorm(objective)  # in place below the root: same parameters
    objective.to(device)
    if runtime.channels_last:
        objective.to(memory_format=torch.channels_last)
    step_module: nn.Module = objective
    if distributed.world_size() > 1:
        ids = [device.index] if device.type == "cuda" and device.index is not None else None
        step_module = DistributedDataParallel(objective, device_ids=ids)
    if runtime.compile:
        step_module = torch.compile(step_module)
    return step_module


@dataclass
class TrainLoader:
    """The training batches of one rank: a shared permutation per epoch (DistributedSampler), each
    rank loading its 1/N of the global batch, reseeded from (seed, epoch) so a resumed run sees the
    same batches and augmentations as an uninterrupted one."""

    loader: DataLoader
    sampler: DistributedSampler
    steps_per_epoch: int
    seed: int

    @classmethod
    def build(cls, train_set: Dataset, cfg: TrainConfig, runtime: TrainingRuntime, device: torch.device,
              seed: int, desc: str) -> "TrainLoader":
        rank_batch = distributed.per_rank_batch(cfg.batch_size, desc)
        sampler = DistributedSampler(train_set, num_replicas=distributed.world_size(), rank=distributed.rank(),
                                     shuffle=True, seed=seed * 1000, drop_last=True)
        steps_per_epoch = len(sampler) // rank_batch  # drop_last: BN needs > 1 sample
        if steps_per_epoch == 0:
            raise ValueError(f"{desc}: batch_size {cfg.batch_size} is larger than the {len(train_set)} training images")
        if cfg.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
        loader = DataLoader(train_set, batch_size=rank_batch, sampler=sampler, drop_last=True,
                            num_workers=runtime.workers, pin_memory=runtime.pin_memory and device.type == "cuda",
                            persistent_workers=runtime.persistent_workers and runtime.workers > 0,
                            generator=torch.Generator(), worker_init_fn=seed_worker)
        return cls(loader, sampler, steps_per_epoch, seed)

    def start_epoch(self, epoch: int) -> None:
        # Exactly the same batches on resume with data.workers=0 or non-persistent workers; persistent
        # workers keep their first epoch's seeds.
        seed_everything(self.seed * 1000 + epoch)
        rank_seed = int(np.random.SeedSequence([self.seed, epoch, distributed.rank()]).generate_state(1)[0])
        reseed_augmentation(self.loader.dataset, rank_seed)  # ranks draw different augmentations
        assert self.loader.generator is not None
        self.loader.generator.manual_seed(rank_seed)  # worker seeds
        self.sampler.set_epoch(epoch)

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        for index, batch in enumerate(self.loader):
            if index >= self.steps_per_epoch:
                return
            yield batch


@dataclass
class TrainState:
    """What a checkpoint holds: the objective's weights, the optimizer, the grad scaler, the weight
    average if any and the history so far. Saved atomically (when: ``TrainingRuntime.checkpoint_seconds``);
    resumed only by the same fingerprint."""

    objective: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    base_lrs: list[float]  # the configured rates the schedule scales (a checkpoint holds the last scaled ones)
    result: TrainResult = field(default_factory=TrainResult)
    ema: AveragedModel | None = None  # train.ema_decay: the weight average evaluated and shipped

    @property
    def shipped(self) -> nn.Module:
        """The network evaluated on val and saved: the weight average when there is one."""
        return self.ema.module if self.ema is not None else self.objective.deployable

    @classmethod
    def create(cls, objective: nn.Module, cfg: TrainConfig, device: torch.device,
               runtime: TrainingRuntime) -> "TrainState":
        optimizer = build_optimizer(objective, cfg)
        return cls(objective, optimizer, torch.amp.GradScaler(device.type, enabled=runtime.amp == "fp16"),
                   [group["lr"] for group in optimizer.param_groups],
                   ema=weight_average(objective.deployable, cfg.ema_decay) if cfg.ema_decay else None)

    def resume(self, checkpoint: Path, fingerprint: str) -> int:
        """Load the checkpoint of this fingerprint, if any; the first epoch still to train."""
        state = _load_checkpoint(checkpoint, fingerprint)
        if state is None:
            return 0
        self.objective.load_state_dict(state["task"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.result.history, self.result.steps, self.result.seconds = state["history"], state["steps"], state["seconds"]
        self.result.resumed_from_epoch = state["epoch"] + 1
        return self.result.resumed_from_epoch

    def save(self, checkpoint: Path, fingerprint: str, epoch: int) -> None:
        atomic_torch_save(
            {"fingerprint": fingerprint, "epoch": epoch, "task": self.objective.state_dict(),
             "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
             **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
             "history": self.result.history, "steps": self.result.steps, "seconds": self.result.seconds},
            checkpoint,
        )


def train_one_epoch(step_module: nn.Module, state: TrainState, data: TrainLoader, epoch: int, cfg: TrainConfig,
                    device: torch.device, runtime: TrainingRuntime, desc: str) -> dict[str, Any]:
    """One epoch of steps (learning rate set per step); its row of the history, without val figures."""
    optimizer, scaler = state.optimizer, state.scaler
    total_steps = data.steps_per_epoch * cfg.epochs
    state.objective.train()
    sums: dict[str, Tensor] = {}
    started = time.perf_counter()
    bar = tqdm(total=data.steps_per_epoch, desc=f"{desc} {epoch + 1}/{cfg.epochs}", leave=False,
               disable=None if distributed.is_main() else True)
    for index, (images, targets) in enumerate(data.batches()):
        step = epoch * data.steps_per_epoch + index
        for group, base_lr in zip(optimizer.param_groups, state.base_lrs):
            group["lr"] = base_lr * lr_factor(cfg, step, total_steps)
        with runtime.autocast(device):
            loss, parts = step_module(runtime.images(images, device), targets.to(device, non_blocking=True))
        if not torch.isfinite(loss):
            kept = f"; the checkpoint after epoch {epoch} stays in the stage folder" if epoch > 0 else ""
            raise TrainingDiverged(f"{desc}: loss became {loss.item()} at step {step} (epoch {epoch + 1}){kept}; "
                                   f"lower the learning rate (train.lr {cfg.lr:g})"
                                   + (" or use run.amp=bf16" if runtime.amp == "fp16" else ""))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if state.ema is not None:
            state.ema.update_parameters(state.objective.deployable)
        for name, value in {"loss": loss, **parts}.items():
            sums[name] = sums.get(name, 0.0) + value.detach().float()  # summed on device: no sync per step
        bar.update(1)
        if index % 20 == 0:
            bar.set_postfix(loss=f"{sums['loss'].item() / (index + 1):.3f}")
    bar.close()
    seconds = time.perf_counter() - started
    state.result.steps += data.steps_per_epoch
    state.result.seconds += seconds
    return {"epoch": epoch + 1, **_mean_over_ranks(sums, data.steps_per_epoch, device),
            "lr": optimizer.param_groups[0]["lr"], "seconds": seconds,
            "images_per_second": data.steps_per_epoch * cfg.batch_size / max(seconds, 1e-9)}


def train(
    objective: nn.Module,
    train_set: Dataset,
    val_loader: DataLoader,
    cfg: TrainConfig,
    *,
    num_classes: int,
    device: torch.device,
    seed: int,
    checkpoint: Path,
    fingerprint: str,
    desc: str,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    runtime: TrainingRuntime | None = None,
    make_evaluator: Callable[[], Evaluator] | None = None,
) -> TrainResult:
    """Train ``objective`` for ``cfg.epochs``, evaluating ``objective.deployable`` on val every
    ``cfg.eval_every`` epochs and after the last one; resume from ``checkpoint`` if it holds this
    ``fingerprint``. ``cfg.batch_size`` is the global batch (see :class:`TrainLoader`); rank 0 alone
    prints and checkpoints. ``make_evaluator()`` gives the val figures (default: segmentation mIoU
    and pixel accuracy), logged as ``val_<name>``.
    """
    runtime = runtime or TrainingRuntime()
    make_evaluator = make_evaluator or partial(SegmentationEvaluator.for_classes, num_classes)
    main = distributed.is_main()
    step_module = prepare_for_devices(objective, device, runtime, desc)
    state = TrainState.create(objective, cfg, device, runtime)
    data = TrainLoader.build(train_set, cfg, runtime, device, seed, desc)
    start_epoch = state.resume(checkpoint, fingerprint)
    if start_epoch:
        _say(main, f"[{desc}] resuming from checkpoint after epoch {start_epoch}/{cfg.epochs}")
    saved_at = None
    for epoch in range(start_epoch, cfg.epochs):
        data.start_epoch(epoch)
        row = train_one_epoch(step_module, state, data, epoch, cfg, device, runtime, desc)
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            if cfg.precise_bn_batches:
                recompute_batchnorm(state.shipped, data, cfg.precise_bn_batches, device, runtime)
            state.result.final_evaluation = evaluate_epoch(state.shipped, val_loader, make_evaluator(), device,
                                                           runtime, row)
        state.result.history.append(row)
        _say(main, _epoch_line(desc, cfg.epochs, row))
        due = saved_at is None or epoch + 1 == cfg.epochs or time.monotonic() - saved_at >= runtime.checkpoint_seconds
        if main and due:
            state.save(checkpoint, fingerprint, epoch)
            saved_at = time.monotonic()
        if on_epoch is not None:
            on_epoch(row)
    if state.ema is not None:  # what the caller saves, strips and exports: the average
        objective.deployable.load_state_dict(state.ema.module.state_dict())
    return state.result


def recompute_batchnorm(model: nn.Module, data: TrainLoader, batches: int, device: torch.device,
                        runtime: TrainingRuntime) -> None:
    """Replace every batch-norm layer's running statistics by their plain mean over ``batches`` training
    batches (augmented, as in training) through ``model`` as it is now (torch's ``update_bn``, the
    recipe of SWA and of Detectron2's PreciseBN). The momentum averages mix the statistics of the
    last few dozen steps' weights: evaluated while the weights still move, they understate the
    network. Changes no weight, and no later batch where each epoch reseeds its sampling and augmentation
    (``data.workers`` 0 or non-persistent workers; persistent ones draw on from their own streams)."""
    images = (runtime.images(batch, device) for batch, _ in islice(cycle_batches(data), batches))
    update_bn(images, model)


def cycle_batches(data: TrainLoader) -> Iterator[tuple[Tensor, Tensor]]:
    """The epoch's batches again and again (fresh augmentations each pass)."""
    while True:
        yield from data.batches()


def evaluate_epoch(model: nn.Module, val_loader: DataLoader, evaluator: Evaluator, device: torch.device,
                   runtime: TrainingRuntime, row: dict[str, Any]) -> Evaluation:
    """Val figures of the network to ship, added to the epoch's history ``row`` as ``val_loss`` and
    ``val_<name>``. Every rank evaluates rank 0's batch-norm statistics, the ones it saves."""
    distributed.broadcast_buffers(model)
    evaluation = evaluate(model, val_loader, evaluator, device, runtime=runtime)
    figures = evaluation.evaluator.scalars()
    row.update({"val_loss": evaluation.loss, **{f"val_{name}": value for name, value in figures.items()}})
    return evaluation


def _epoch_line(desc: str, epochs: int, row: dict[str, Any]) -> str:
    """``[desc] epoch 3/14 loss 0.7710 val miou 14.78 (13.2 s, 97.1 images/s)``: the headline val
    figure (the evaluator's first) only on evaluated epochs."""
    headline = next((key for key in row if key.startswith("val_") and key != "val_loss"), None)
    status = f" val {headline[4:]} {row[headline]:.2f}" if headline else ""
    return (f"[{desc}] epoch {row['epoch']}/{epochs} loss {row['loss']:.4f}{status} "
            f"({row['seconds']:.1f} s, {row['images_per_second']:.1f} images/s)")


def _mean_over_ranks(sums: dict[str, Tensor], steps: int, device: torch.device) -> dict[str, float]:
    """Per-step mean of each loss part, averaged over ranks (every rank has the same keys in order)."""
    names = list(sums)
    totals = np.array([float(sums[name]) for name in names], dtype=np.float64)
    totals = distributed.all_reduce_sum(totals, _collective_device(device)) / distributed.world_size()
    return {name: float(total) / steps for name, total in zip(names, totals)}


def _say(main: bool, text: str) -> None:
    if main:
        print(text)


def _load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The last checkpoint if it belongs to this exact configuration, else None (start afresh)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file from an old crash: start over, say so
        print(f"ignoring unreadable checkpoint {path}: {exc}")
        return None
    if state.get("fingerprint") != fingerprint:
        print(f"ignoring checkpoint {path}: it belongs to another configuration")
        return None
    return state
