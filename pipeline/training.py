"""One training loop for every model the pipeline trains (teacher, baseline, distilled student).

The loop trains a *task*: an ``nn.Module`` whose forward(images, targets) returns (loss, parts)
and whose ``deployable`` attribute is the network to evaluate and ship. It checkpoints atomically
after every epoch and resumes from the last checkpoint of the same fingerprint. Each epoch
reseeds from (seed, epoch), so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline.artifacts import atomic_torch_save
from pipeline.config import TrainConfig
from pipeline.environment import seed_everything
from pipeline.metrics import ConfusionMatrix


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

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(self.steps, 1)


def build_optimizer(task: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    backbone, head = task.trainable_groups()
    groups = [
        {"params": [p for p in backbone if p.requires_grad], "lr": cfg.lr},
        {"params": [p for p in head if p.requires_grad], "lr": cfg.lr * cfg.head_lr_mult},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


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


@torch.no_grad()
def evaluate_segmentation(
    model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device, ignore_index: int = 255
) -> ConfusionMatrix:
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(num_classes, ignore_index)
    for images, targets in loader:
        logits = model(images.to(device))
        matrix.update(logits.argmax(1).cpu(), targets)
    model.train(was_training)
    return matrix


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
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
) -> TrainResult:
    """Train ``task`` for ``cfg.epochs``, evaluating ``task.deployable`` on val after each epoch.

    ``evaluate(model)`` gives the figures logged as ``val_<name>`` (the first one is printed);
    by default the segmentation mIoU and pixel accuracy over ``val_loader``.
    """
    if evaluate is None:
        def evaluate(model: nn.Module) -> dict[str, float]:
            matrix = evaluate_segmentation(model, val_loader, num_classes, device)
            return {"miou": matrix.miou(), "pixel_accuracy": matrix.pixel_accuracy()}

    task.to(device)
    optimizer = build_optimizer(task, cfg)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    steps_per_epoch = len(train_set) // cfg.batch_size  # drop_last: BN needs > 1 sample
    if steps_per_epoch == 0:
        raise ValueError(f"{desc}: batch_size {cfg.batch_size} is larger than the {len(train_set)} training images")
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    total_steps = steps_per_epoch * cfg.epochs

    result = TrainResult()
    start_epoch = 0
    state = _load_checkpoint(checkpoint, fingerprint)
    if state is not None:
        task.load_state_dict(state["task"])
        optimizer.load_state_dict(state["optimizer"])
        result.history = state["history"]
        result.steps = state["steps"]
        result.seconds = state["seconds"]
        start_epoch = result.resumed_from_epoch = state["epoch"] + 1
        print(f"[{desc}] resuming from checkpoint after epoch {start_epoch}/{cfg.epochs}")

    for epoch in range(start_epoch, cfg.epochs):
        seed_everything(seed * 1000 + epoch)
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                            num_workers=workers, generator=generator, pin_memory=device.type == "cuda")
        task.train()
        sums: dict[str, float] = {}
        started = time.perf_counter()
        bar = tqdm(total=steps_per_epoch, desc=f"{desc} {epoch + 1}/{cfg.epochs}", leave=False, disable=None)
        for index, (images, targets) in enumerate(loader):
            if index >= steps_per_epoch:
                break
            step = epoch * steps_per_epoch + index
            for group, base_lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base_lr * lr_factor(cfg, step, total_steps)
            loss, parts = task(images.to(device, non_blocking=True), targets.to(device, non_blocking=True))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for name, value in {"loss": loss, **parts}.items():
                sums[name] = sums.get(name, 0.0) + value.item()
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss'] / (index + 1):.3f}")
        bar.close()
        epoch_seconds = time.perf_counter() - started
        result.steps += steps_per_epoch
        result.seconds += epoch_seconds
        figures = evaluate(task.deployable)
        row = {
            "epoch": epoch + 1,
            **{name: total / steps_per_epoch for name, total in sums.items()},
            **{f"val_{name}": value for name, value in figures.items()},
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": epoch_seconds,
        }
        result.history.append(row)
        headline, value = next(iter(figures.items()))
        print(f"[{desc}] epoch {epoch + 1}/{cfg.epochs} loss {row['loss']:.4f} val {headline} {value:.2f} "
              f"({epoch_seconds:.1f} s)")
        atomic_torch_save(
            {"fingerprint": fingerprint, "epoch": epoch, "task": task.state_dict(),
             "optimizer": optimizer.state_dict(), "history": result.history,
             "steps": result.steps, "seconds": result.seconds},
            checkpoint,
        )
        if on_epoch is not None:
            on_epoch(row)
    return result


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
