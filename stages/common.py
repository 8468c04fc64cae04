"""What the three training stages share: run the loop, save the deployable weights, summarise."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.artifacts import atomic_json_lines, atomic_torch_save
from pipeline.builders import data_splits, val_loader
from pipeline.config import TrainConfig
from pipeline.environment import configure_torch, seed_everything
from pipeline.models import count_parameters
from pipeline.stage import StageContext, StageResult
from pipeline.tasks import get_task
from pipeline.tasks.segmentation import segmentation_summary  # noqa: F401 - re-exported for stages
from pipeline.training import SupervisedTask, train

# Modules whose source is part of every training stage's fingerprint.
TRAINING_CODE = ("pipeline.training", "pipeline.models", "pipeline.data", "pipeline.builders", "pipeline.distill",
                 "pipeline.tasks")
TRAINING_KEYS = ("task", "run.seed", "run.deterministic", "data")


def run_training(ctx: StageContext, task: nn.Module, train_cfg: TrainConfig, role: str, desc: str) -> StageResult:
    """Train ``task``, write ``model.pt`` (deployable weights) and ``history.jsonl``, return metrics."""
    config = ctx.config
    device = configure_torch(config.run)
    seed_everything(config.run.seed)
    info, train_set, val_set = data_splits(config)
    loader = val_loader(config, val_set)
    kind = get_task(config.task)
    result = train(task, train_set, loader, train_cfg, num_classes=info.num_classes, device=device,
                   seed=config.run.seed, checkpoint=ctx.dir / "checkpoint.pt", fingerprint=ctx.fingerprint,
                   desc=desc, workers=config.data.workers,
                   evaluate=lambda model: kind.evaluate_model(model, loader, info, device).scalars())
    model = task.deployable
    evaluation = kind.evaluate_model(model, loader, info, device)
    # A plain model ships as is; a Distiller is saved whole (heads included): stripping is its own stage.
    saved, weights_name = (model, "model.pt") if isinstance(task, SupervisedTask) else (task, "distiller.pt")
    atomic_torch_save({k: v.cpu() for k, v in saved.state_dict().items()}, ctx.dir / weights_name)
    atomic_json_lines(ctx.dir / "history.jsonl", result.history)
    (ctx.dir / "checkpoint.pt").unlink(missing_ok=True)  # finished: the resume point is no longer needed
    summary = evaluation.summary()
    summary.update({
        "params": count_parameters(model),
        "epochs": train_cfg.epochs,
        "steps": result.steps,
        "train_seconds": round(result.seconds, 2),
        "seconds_per_step": round(result.seconds_per_step, 4),
        "images_per_second": round(result.steps * train_cfg.batch_size / max(result.seconds, 1e-9), 2),
        "device": str(device),
    })
    if torch.cuda.is_available() and device.type == "cuda":
        summary["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return StageResult(outputs={"weights": weights_name, "history": "history.jsonl"},
                       metrics={role: summary})
