"""What the three training stages share: run the loop, save the deployable weights, summarise."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Subset

from pipeline import distributed
from pipeline.artifacts import atomic_json_lines, atomic_torch_save
from pipeline.builders import data_splits, val_loader
from pipeline.config import PipelineConfig, TrainConfig
from pipeline.environment import configure_torch, seed_everything
from pipeline.models import count_parameters
from pipeline.orchestration.stage import StageContext, StageResult
from pipeline.tasks import get_task
from pipeline.tasks.segmentation import segmentation_summary  # noqa: F401 - re-exported for stages
from pipeline.training import SupervisedObjective, TrainingRuntime, evaluate, train

# Settings that change what is learnt (channels_last / compile / loader settings only change speed).
TRAINING_KEYS = ("task", "run.seed", "run.deterministic", "run.amp", "run.sync_batchnorm", "data")


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


def training_seed(config: PipelineConfig, train_cfg: TrainConfig) -> int:
    """The seed of one training: its own ``train.seed`` if set, else ``run.seed``."""
    return config.run.seed if train_cfg.seed is None else train_cfg.seed


def seed_model_init(config: PipelineConfig, train_cfg: TrainConfig) -> None:
    """Call before building a model, so its random initialisation follows the training's seed."""
    seed_everything(training_seed(config, train_cfg))


class EpochBoard:
    """Per-epoch scalars (losses, val mIoU, lr) to TensorBoard under ``<stage>/tensorboard``."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def log(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def tensorboard_writer(ctx: StageContext, desc: str) -> EpochBoard | None:
    """A TensorBoard logger when tensorboard is installed; optional, so only a note when it is not."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print(f"[{desc}] tensorboard not installed: no TensorBoard logs (pip install tensorboard to get them)")
        return None
    return EpochBoard(SummaryWriter(log_dir=str(ctx.dir / "tensorboard")))


def last_quarter_change(history: list[dict[str, Any]]) -> float | None:
    """How far the headline val figure (mIoU, top-1) moved over the last quarter of training: max - min
    over the epochs from the one at 75% of training to the last. Under 1 point = plateaued."""
    evaluated = [row for row in history if "val_loss" in row]  # train.eval_every may skip epochs
    key = next((k for k in evaluated[-1] if k.startswith("val_") and k != "val_loss"), None) if evaluated else None
    start = 0.75 * history[-1]["epoch"] if history else 0
    values = [row[key] for row in evaluated if row["epoch"] >= start] if key else []
    if len(values) < 2:
        return None
    return round(max(values) - min(values), 4)


def load_centers(ctx: StageContext) -> dict[str, dict[str, Tensor]]:
    """Method name -> {"teacher_centers": tensor} from the teacher_centers stage's ``centers`` output
    ({method: (K, C) tensor}), or {} when that stage is off (no method needs them)."""
    if not ctx.has_input("teacher_centers"):
        return {}
    centers = torch.load(ctx.input_path("teacher_centers", "centers"), map_location="cpu", weights_only=True)
    return {method: {"teacher_centers": tensor} for method, tensor in centers.items()}


def run_training(ctx: StageContext, objective: nn.Module, train_cfg: TrainConfig, role: str, desc: str) -> StageResult:
    """Train ``objective``, write ``model.pt`` (deployable weights) and ``history.jsonl``, return metrics.

    Under torchrun every rank trains; rank 0 alone writes the files."""
    config = ctx.config
    device = training_device(config)
    runtime = training_runtime(config)
    seed = training_seed(config, train_cfg)
    seed_everything(seed)
    info, train_set, val_set = data_splits(config)
    if train_cfg.max_images is not None and train_cfg.max_images < len(train_set):
        train_set = Subset(train_set, range(train_cfg.max_images))
    loader = val_loader(config, val_set)
    kind = get_task(config.task)
    board = tensorboard_writer(ctx, desc) if distributed.is_main() else None
    try:
        result = train(objective, train_set, loader, train_cfg, num_classes=info.num_classes, device=device,
                       seed=seed, checkpoint=ctx.dir / "checkpoint.pt", fingerprint=ctx.fingerprint,
                       desc=desc, runtime=runtime, on_epoch=board.log if board else None,
                       make_evaluator=lambda: kind.evaluator(info))
    finally:
        if board:
            board.close()
    model = objective.deployable
    evaluation = result.final_evaluation  # None only when resuming after the last epoch was already trained
    if evaluation is None:
        evaluation = evaluate(model, loader, kind.evaluator(info), device, runtime)
    # A plain model ships as is; a Distiller is saved whole (heads included): stripping is its own stage.
    plain = isinstance(objective, SupervisedObjective)
    saved, weights_name = (model, "model.pt") if plain else (objective, "distiller.pt")
    if distributed.is_main():
        atomic_torch_save({k: v.cpu() for k, v in saved.state_dict().items()}, ctx.dir / weights_name)
        atomic_json_lines(ctx.dir / "history.jsonl", result.history)
        (ctx.dir / "checkpoint.pt").unlink(missing_ok=True)  # finished: the resume point is no longer needed
    summary = evaluation.evaluator.summary()
    summary.update({
        "val_loss": round(evaluation.loss, 6),
        "params": count_parameters(model),
        "epochs": train_cfg.epochs,
        "steps": result.steps,
        "train_seconds": round(result.seconds, 2),
        "seconds_per_step": round(result.seconds_per_step, 4),
        "images_per_second": round(result.steps * train_cfg.batch_size / max(result.seconds, 1e-9), 2),
        "device": str(device),
        "world_size": distributed.world_size(),
        "amp": runtime.amp,
        "last_quarter_change": last_quarter_change(result.history),
    })
    if torch.cuda.is_available() and device.type == "cuda":
        summary["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return StageResult(outputs={"weights": weights_name, "history": "history.jsonl"},
                       metrics={role: summary})
