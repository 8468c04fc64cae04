"""Multi-process training (torch.distributed, gloo on CPU) follows a single process, and the GPU
training options (mixed precision, channels_last) run on CPU too.

Why the equivalence test uses a model without BatchNorm: with DDP each rank normalises with its
own half-batch statistics (SyncBatchNorm fixes that, but torch only implements it on GPUs), so a BN
model legitimately differs from one process. Without BN, N ranks see exactly the global batch of
one process (one shared permutation per epoch), DDP averages the per-rank mean gradients, and
with equal pixel counts per rank (no ignore pixels, no augmentation) that average is the
single-process gradient. What remains is float32 summation order: tolerance rtol 1e-5, atol 1e-6.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader

from pipeline import distributed
from pipeline.config import TrainConfig, load_config
from pipeline.data import build_dataset, dataset_info, segmentation_collate
from pipeline.training import SupervisedObjective, TrainingRuntime, prepare_for_devices, train

ROOT = Path(__file__).resolve().parents[1]
DATA = ["data.image_size=32", "data.train_size=16", "data.val_size=7", "data.augment.hflip=false",
        "data.augment.scale=[1.0, 1.0]", "data.augment.color_jitter=0.0"]
TRAIN = TrainConfig(epochs=2, batch_size=8, lr=0.05, weight_decay=1e-4)


class TinySegmenter(nn.Module):
    """Two convolutions, no BatchNorm, no dropout: the same function on every rank."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.classifier = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.body(x)))

    def parameter_groups(self):
        return list(self.body.parameters()), list(self.classifier.parameters())


def fit(out: Path, runtime: TrainingRuntime | None = None, train_cfg: TrainConfig = TRAIN):
    config = load_config(None, DATA)
    info = dataset_info(config.data)
    torch.manual_seed(0)
    task = SupervisedObjective(TinySegmenter(info.num_classes))
    val = DataLoader(build_dataset(config.data, "val"), batch_size=2, collate_fn=segmentation_collate)
    result = train(task, build_dataset(config.data, "train"), val, train_cfg, num_classes=info.num_classes,
                   device=torch.device("cpu"), seed=0, checkpoint=out / "checkpoint.pt", fingerprint="fp",
                   desc=f"rank{distributed.rank()}", runtime=runtime)
    return task, result


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    assert distributed.init_from_env("cpu")
    try:
        task, result = fit(Path(out))
        if distributed.is_main():
            torch.save({"weights": task.model.state_dict(), "history": result.history,
                        "matrix": result.final_matrix.matrix}, Path(out) / "result.pt")
    finally:
        distributed.shutdown()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_train_to_the_weights_of_one_process_with_the_same_global_batch(tmp_path):
    torch.set_num_threads(1)
    single, single_result = fit(tmp_path)
    ddp_dir = tmp_path / "ddp"
    ddp_dir.mkdir()
    mp.spawn(_rank_main, args=(2, free_port(), str(ddp_dir)), nprocs=2, join=True)
    ddp = torch.load(ddp_dir / "result.pt", weights_only=False)

    for name, expected in single.model.state_dict().items():
        torch.testing.assert_close(ddp["weights"][name], expected, rtol=1e-5, atol=1e-6, msg=name)
    for mine, theirs in zip(single_result.history, ddp["history"]):
        assert theirs["loss"] == pytest.approx(mine["loss"], rel=1e-5)  # loss averaged over ranks
    # Each rank scored its own share of the 7 val images; the sum covers every pixel exactly once.
    assert ddp["matrix"].sum() == single_result.final_matrix.matrix.sum() == 7 * 32 * 32
    assert ddp["history"][-1]["val_miou"] == pytest.approx(single_result.history[-1]["val_miou"], abs=0.1)
    assert (ddp_dir / "checkpoint.pt").is_file()  # written by rank 0 alone, with the single-process format


@pytest.mark.slow
def test_torchrun_runs_training_stages_on_every_rank_and_the_rest_once(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
               "-m", "pipeline", "run", "configs/smoke.yaml", "--out", str(out), "--until", "strip",
               "run.threads=1", "baseline.enabled=false", "teacher.train.epochs=1", "student.train.epochs=1",
               "data.train_size=32", "data.val_size=8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stage in ("train_teacher", "distill_student", "strip"):
        assert (out / stage / "_complete.json").is_file()
    assert done.stdout.count("[train_teacher] running") == 1  # rank 0 alone logs
    assert done.stdout.count("[strip] done") == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["teacher"]["world_size"] == 2 and metrics["student"]["world_size"] == 2
    assert not (out / "train_teacher" / "checkpoint.pt").exists()


def test_global_batch_must_split_evenly_over_ranks(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    assert distributed.per_rank_batch(12, "teacher") == 4
    with pytest.raises(ValueError, match=r"batch_size 16 is the global batch and must be divisible by the 3"):
        distributed.per_rank_batch(16, "teacher")


def test_sync_batchnorm_on_cpu_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    task = SupervisedObjective(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)))
    with pytest.raises(ValueError, match=r"run\.sync_batchnorm needs CUDA.*run\.sync_batchnorm=false"):
        prepare_for_devices(task, torch.device("cpu"), TrainingRuntime(sync_batchnorm=True), "teacher")


def test_a_cpu_bf16_channels_last_step_trains(tmp_path):
    runtime = TrainingRuntime(amp="bf16", channels_last=True)
    torch.manual_seed(0)  # fit() builds its model from the same seed
    before = TinySegmenter(dataset_info(load_config(None, DATA).data).num_classes)
    task, result = fit(tmp_path, runtime, TrainConfig(epochs=1, batch_size=8, lr=0.05))
    assert result.history[0]["loss"] == result.history[0]["loss"]  # finite, not NaN
    assert not torch.equal(task.model.classifier.weight, before.classifier.weight)
    assert task.model.body.weight.is_contiguous(memory_format=torch.channels_last)
    assert result.history[0]["images_per_second"] > 0


def test_gpu_options_are_config_keys():
    config = load_config(None, ["run.amp=fp16", "run.channels_last=true", "run.compile=true",
                                "run.sync_batchnorm=true", "data.workers=4", "data.pin_memory=true"])
    assert (config.run.amp, config.run.channels_last, config.run.compile) == ("fp16", True, True)
