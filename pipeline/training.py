"""One training loop for every model the pipeline trains (teacher, baseline, distilled student).

The loop trains a *task*: an ``nn.Module`` whose forward(images, targets) returns (loss, parts)
and whose ``deployable`` attribute is the network to evaluate and ship. It checkpoints atomically
after every epoch and resumes from the last checkpoint of the same fingerprint. Each epoch
reseeds from (seed, epoch), so a resumed run sees the same batches as an uninterrupted one.
The same loop runs on CPU, one GPU (mixed precision, channels_last, torch.compile) and under
torchrun with DistributedDataParallel (see pipeline/distributed.py for the conventions).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
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


class SupervisedTask(nn.Module):
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


def build_optimizer(task: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    backbone, head = task.trainable_groups()
    groups = [
        {"params": [p for p in backbone if p.requires_grad], "lr": cfg.lr},
        {"params": [p for p in head if p.requires_grad], "lr": cfg.lr * cfg.head_lr_mult},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    # The fused kernel updates every parameter in one pass: about 8% of a small model's CPU step.
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


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
    evaluator: Evaluator  # the task's figures (mIoU / top-1 ...)
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


def evaluate_segmentation(
    model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device, ignore_index: int = 255,
    runtime: TrainingRuntime | None = None,
) -> ConfusionMatrix:
    return evaluate(model, loader, SegmentationEvaluator.for_classes(num_classes, ignore_index), device,
                    runtime).matrix


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


def prepare_for_devices(task: nn.Module, device: torch.device, runtime: TrainingRuntime, desc: str) -> nn.Module:
    """Move ``task`` to ``device`` (SyncBatchNorm, memory format) and return the module to call for
    training steps: itself, or wrapped in DistributedDataParallel and/or torch.compile."""
    if runtime.sync_batchnorm and distributed.world_size() > 1:
        if device.type != "cuda":
            raise ValueError(f"{desc}: run.sync_batchnorm needs CUDA (torch's SyncBatchNorm has no CPU kernel); "
                             "set run.sync_batchnorm=false for CPU/gloo runs")
        task = nn.SyncBatchNorm.convert_sync_batchnorm(task)  # in place below the root: same parameters
    task.to(device)
    if runtime.channels_last:
        task.to(memory_format=torch.channels_last)
    step_module: nn.Module = task
    if distributed.world_size() > 1:
        ids = [device.index] if device.type == "cuda" and device.index is not None else None
        step_module = DistributedDataParallel(task, device_ids=ids)
    if runtime.compile:
        step_module = torch.compile(step_module)
    return step_module


def train(
    task: nn.Module,
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
    workers: int = 0,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    runtime: TrainingRuntime | None = None,
    make_evaluator: Callable[[], Evaluator] | None = None,
) -> TrainResult:
    """Train ``task`` for ``cfg.epochs``, evaluating ``task.deployable`` on val after each epoch.

    ``cfg.batch_size`` is the global batch: under torchrun each of the N ranks loads 1/N of it, and
    the batches of one step together are exactly the batch a single process would load (one
    shared permutation per epoch), so N processes follow a single process's run. Rank 0 alone
    prints and checkpoints. ``make_evaluator()`` gives the task's val figures, logged as
    ``val_<name>`` (the first one is printed); by default segmentation mIoU and pixel accuracy.
    """
    if make_evaluator is None:
        def make_evaluator() -> Evaluator:
            return SegmentationEvaluator.for_classes(num_classes)

    runtime = runtime or TrainingRuntime(workers=workers)
    main = distributed.is_main()
    step_module = prepare_for_devices(task, device, runtime, desc)
    optimizer = build_optimizer(task, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=runtime.amp == "fp16")
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    rank_batch = distributed.per_rank_batch(cfg.batch_size, desc)
    sampler = DistributedSampler(train_set, num_replicas=distributed.world_size(), rank=distributed.rank(),
                                 shuffle=True, seed=seed * 1000, drop_last=True)
    steps_per_epoch = len(sampler) // rank_batch  # drop_last: BN needs > 1 sample
    if steps_per_epoch == 0:
        raise ValueError(f"{desc}: batch_size {cfg.batch_size} is larger than the {len(train_set)} training images")
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    total_steps = steps_per_epoch * cfg.epochs
    loader = DataLoader(train_set, batch_size=rank_batch, sampler=sampler, drop_last=True,
                        num_workers=runtime.workers, pin_memory=runtime.pin_memory and device.type == "cuda",
                        persistent_workers=runtime.persistent_workers and runtime.workers > 0,
                        generator=torch.Generator(), worker_init_fn=seed_worker)

    result = TrainResult()
    start_epoch = 0
    state = _load_checkpoint(checkpoint, fingerprint)
    if state is not None:
        task.load_state_dict(state["task"])
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        result.history = state["history"]
        result.steps = state["steps"]
        result.seconds = state["seconds"]
        start_epoch = result.resumed_from_epoch = state["epoch"] + 1
        _say(main, f"[{desc}] resuming from checkpoint after epoch {start_epoch}/{cfg.epochs}")

    for epoch in range(start_epoch, cfg.epochs):
        # Same batches and augmentations for (seed, epoch) whether or not the run was resumed (exactly so
        # with data.workers=0 or non-persistent workers; persistent workers keep their first-epoch seeds).
        seed_everything(seed * 1000 + epoch)
        rank_seed = int(np.random.SeedSequence([seed, epoch, distributed.rank()]).generate_state(1)[0])
        reseed_augmentation(train_set, rank_seed)  # ranks draw different augmentations
        loader.generator.manual_seed(rank_seed)  # worker seeds
        sampler.set_epoch(epoch)
        task.train()
        sums: dict[str, Tensor] = {}
        started = time.perf_counter()
        bar = tqdm(total=steps_per_epoch, desc=f"{desc} {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=None if main else True)
        for index, (images, targets) in enumerate(loader):
            if index >= steps_per_epoch:
                break
            step = epoch * steps_per_epoch + index
            for group, base_lr in zip(optimizer.param_groups, base_lrs):
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
            for name, value in {"loss": loss, **parts}.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float()  # summed on device: no sync per step
            bar.update(1)
            if index % 20 == 0:
                bar.set_postfix(loss=f"{sums['loss'].item() / (index + 1):.3f}")
        bar.close()
        epoch_seconds = time.perf_counter() - started
        result.steps += steps_per_epoch
        result.seconds += epoch_seconds
        means = _mean_over_ranks(sums, steps_per_epoch, device)
        row = {
            "epoch": epoch + 1,
            **means,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": epoch_seconds,
            "images_per_second": steps_per_epoch * cfg.batch_size / max(epoch_seconds, 1e-9),
        }
        status = ""
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            distributed.broadcast_buffers(task)  # evaluate rank 0's BN statistics (the ones it saves) everywhere
            evaluation = evaluate(task.deployable, val_loader, make_evaluator(), device, runtime=runtime)
            result.final_evaluation = evaluation
            figures = evaluation.evaluator.scalars()
            row.update({"val_loss": evaluation.loss, **{f"val_{name}": value for name, value in figures.items()}})
            headline, value = next(iter(figures.items()))
            status = f" val {headline} {value:.2f}"
        result.history.append(row)
        _say(main, f"[{desc}] epoch {epoch + 1}/{cfg.epochs} loss {row['loss']:.4f}{status} "
                   f"({epoch_seconds:.1f} s, {row['images_per_second']:.1f} images/s)")
        if main:
            atomic_torch_save(
                {"fingerprint": fingerprint, "epoch": epoch, "task": task.state_dict(),
                 "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "history": result.history,
                 "steps": result.steps, "seconds": result.seconds},
                checkpoint,
            )
        if on_epoch is not None:
            on_epoch(row)
    return result


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
