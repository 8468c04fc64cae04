"""What the three training stages share: run the loop, save the deployable weights, summarise."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.artifacts import atomic_json_lines, atomic_torch_save
from pipeline.builders import data_splits, val_loader
from pipeline.config import PipelineConfig, TrainConfig
from pipeline.environment import configure_torch, seed_everything
from pipeline.metrics import ConfusionMatrix
from pipeline.models import count_parameters
from pipeline.stage import StageContext, StageResult
from pipeline import distributed
from pipeline.training import SupervisedTask, TrainingRuntime, evaluate_segmentation, train

# Modules whose source is part of every training stage's fingerprint.
TRAINING_CODE = ("pipeline.training", "pipeline.models", "pipeline.data", "pipeline.builders", "pipeline.distill",
                 "pipeline.distributed")
# Settings that change what is learnt (channels_last / compile / loader settings only change speed).
TRAINING_KEYS = ("run.seed", "run.deterministic", "run.amp", "run.sync_batchnorm", "data")


def training_runtime(config: PipelineConfig) -> TrainingRuntime:
    return TrainingRuntime(amp=config.run.amp, channels_last=config.run.channels_last, compile=config.run.compile,
                           sync_batchnorm=config.run.sync_batchnorm, workers=config.data.workers,
                           pin_memory=config.data.pin_memory, persistent_workers=config.data.persistent_workers)


def training_device(config: PipelineConfig) -> torch.device:
    """The configured device; under torchrun on CUDA, this process's own GPU (LOCAL_RANK)."""
    device = configure_torch(config.run)
    if device.type == "cuda" and distributed.world_size() > 1:
        return torch.device("cuda", distributed.local_rank())
    return device


def segmentation_summary(matrix: ConfusionMatrix, class_names: tuple[str, ...]) -> dict[str, Any]:
    return {
        "miou": round(matrix.miou(), 4),
        "pixel_accuracy": round(matrix.pixel_accuracy(), 4),
        "per_class_iou": {name: _round(iou) for name, iou in zip(class_names, matrix.per_class_iou())},
    }


def _round(value: float) -> float | None:
    return None if value != value else round(float(value) * 100, 4)  # NaN -> None (class absent)


def run_training(ctx: StageContext, task: nn.Module, train_cfg: TrainConfig, role: str, desc: str) -> StageResult:
    """Train ``task``, write ``model.pt`` (deployable weights) and ``history.jsonl``, return metrics.

    Under torchrun every rank trains; rank 0 alone writes the files."""
    config = ctx.config
    device = training_device(config)
    runtime = training_runtime(config)
    seed_everything(config.run.seed)
    info, train_set, val_set = data_splits(config)
    loader = val_loader(config, val_set)
    result = train(task, train_set, loader, train_cfg, num_classes=info.num_classes, device=device,
                   seed=config.run.seed, checkpoint=ctx.dir / "checkpoint.pt", fingerprint=ctx.fingerprint,
                   desc=desc, runtime=runtime)
    model = task.deployable
    matrix = result.final_matrix  # None only when resuming after the last epoch was already trained
    if matrix is None:
        matrix = evaluate_segmentation(model, loader, info.num_classes, device, runtime=runtime)
    # A plain model ships as is; a Distiller is saved whole (heads included): stripping is its own stage.
    saved, weights_name = (model, "model.pt") if isinstance(task, SupervisedTask) else (task, "distiller.pt")
    if distributed.is_main():
        atomic_torch_save({k: v.cpu() for k, v in saved.state_dict().items()}, ctx.dir / weights_name)
        atomic_json_lines(ctx.dir / "history.jsonl", result.history)
        (ctx.dir / "checkpoint.pt").unlink(missing_ok=True)  # finished: the resume point is no longer needed
    summary = segmentation_summary(matrix, info.class_names)
    summary.update({
        "params": count_parameters(model),
        "epochs": train_cfg.epochs,
        "steps": result.steps,
        "train_seconds": round(result.seconds, 2),
        "seconds_per_step": round(result.seconds_per_step, 4),
        "images_per_second": round(result.steps * train_cfg.batch_size / max(result.seconds, 1e-9), 2),
        "device": str(device),
        "world_size": distributed.world_size(),
        "amp": runtime.amp,
    })
    if torch.cuda.is_available() and device.type == "cuda":
        summary["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return StageResult(outputs={"weights": weights_name, "history": "history.jsonl"},
                       metrics={role: summary})
