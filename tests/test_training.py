"""Training checkpoints after its first and last epoch and every minute between, and an interrupted
run resumes where it stopped, ending with exactly the weights an uninterrupted run would have."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader

from pipeline.builders import build_student, data_splits
from pipeline.config import RunConfig, load_config
from pipeline.environment import configure_torch
from pipeline.orchestration.cli import main
from pipeline.tasks.segmentation import SegmentationEvaluator
from pipeline.training import (SupervisedObjective, TrainingRuntime, TrainLoader, TrainState, evaluate, lr_factor,
                               train, weight_average)

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.image_size=32", "data.train_size=32", "data.val_size=8", "student.train.epochs=3",
        "student.train.batch_size=8", "student.model.width_mult=0.25", "student.model.aspp_channels=8",
        "student.model.decoder_channels=8", "student.model.low_level_channels=4", "distill.methods=[{name: none}]"]


class Interrupt(Exception):
    pass


def fit(checkpoint: Path, stop_after_epoch: int | None = None, overrides: tuple[str, ...] = (),
        runtime: TrainingRuntime | None = None):
    config = load_config(None, [*TINY, *overrides])
    torch.manual_seed(0)
    info, train_set, val_set = data_splits(config)
    task = SupervisedObjective(build_student(config))

    def on_epoch(row):
        if row["epoch"] == stop_after_epoch:
            raise Interrupt

    result = train(task, train_set, DataLoader(val_set, batch_size=8), config.student.train,
                   num_classes=info.num_classes, device=torch.device("cpu"), seed=0, checkpoint=checkpoint,
                   fingerprint="fp", desc="test", on_epoch=on_epoch, runtime=runtime)
    return task, result


@pytest.mark.parametrize("overrides", [(), ("student.train.ema_decay=0.9",)], ids=["plain", "weight-average"])
def test_interrupted_training_resumes_from_its_checkpoint_to_identical_weights(tmp_path, overrides):
    reference, _ = fit(tmp_path / "uninterrupted.pt", overrides=overrides)
    with pytest.raises(Interrupt):
        fit(tmp_path / "ckpt.pt", stop_after_epoch=1, overrides=overrides)
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["epoch"] == 0
    resumed, result = fit(tmp_path / "ckpt.pt", overrides=overrides)
    assert result.resumed_from_epoch == 1
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("seconds, saved_after", [(3600.0, [1, 3]), (0.0, [1, 2, 3])])
def test_checkpoints_are_written_after_the_first_and_last_epoch_and_every_interval_between(
        tmp_path, monkeypatch, seconds, saved_after):
    saved: list[int] = []
    original = TrainState.save
    monkeypatch.setattr(TrainState, "save", lambda self, path, fp, epoch: (saved.append(epoch + 1),
                                                                           original(self, path, fp, epoch)))
    fit(tmp_path / "ckpt.pt", runtime=TrainingRuntime(checkpoint_seconds=seconds))
    assert saved == saved_after


def test_a_checkpoint_of_another_configuration_is_ignored(tmp_path):
    config = load_config(None, TINY)
    torch.save({"fingerprint": "other"}, tmp_path / "ckpt.pt")
    _, result = fit(tmp_path / "ckpt.pt")
    assert result.resumed_from_epoch == 0 and len(result.history) == config.student.train.epochs


def test_training_flushes_subnormal_floats_to_zero_on_cpu_unless_told_not_to():
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormal floats (no FTZ/DAZ)")
    subnormal = 1e-40  # under float32's smallest normal, 1.2e-38
    try:
        configure_torch(RunConfig())
        assert (torch.tensor([subnormal]) * 1.0).item() == 0.0
        configure_torch(RunConfig(flush_denormal=False))
        assert (torch.tensor([subnormal]) * 1.0).item() == pytest.approx(subnormal, rel=1e-3)
    finally:
        torch.set_flush_denormal(False)


def test_cosine_schedule_with_warmup():
    cfg = load_config(None, ["student.train.warmup_steps=2"]).student.train
    assert lr_factor(cfg, 0, 10) == 0.5 and lr_factor(cfg, 1, 10) == 1.0
    assert lr_factor(cfg, 2, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 10, 10) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.slow
def test_a_killed_pipeline_resumes_training_from_the_last_epoch(tmp_path):
    """SIGKILL mid-training (no clean-up possible), then the same command picks up the checkpoint."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "pipeline", "run", "configs/smoke.yaml", "--out", str(out),
               "--until", "train_teacher", "teacher.train.epochs=3", "data.train_size=64"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    checkpoint = out / "train_teacher" / "checkpoint.pt"
    deadline = time.time() + 300
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert checkpoint.exists(), "the first epoch should have written a checkpoint"
    assert not (out / "train_teacher" / "_complete.json").exists()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resuming from checkpoint after epoch" in done.stdout
    assert (out / "train_teacher" / "_complete.json").exists()


def test_the_weight_average_follows_the_model_fast_at_first_then_at_the_configured_decay():
    model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    weight, counter = model[0].weight, model[1].num_batches_tracked
    average = weight_average(model, decay=0.9)
    with torch.no_grad():
        weight.fill_(0.0)
    average.update_parameters(model)  # the first update copies
    with torch.no_grad():
        weight.fill_(1.0)
    expected = 0.0
    for update in range(1, 100):  # the decay reaches 0.9 at update 80
        counter.fill_(update)
        average.update_parameters(model)
        decay = min(0.9, (1 + update) / (10 + update))
        expected = decay * expected + (1 - decay) * 1.0
        assert average.module[0].weight.item() == pytest.approx(expected)
        assert average.module[1].num_batches_tracked.item() == update  # counters are copied, not averaged


def test_with_ema_decay_the_weight_average_is_what_is_evaluated_and_returned(tmp_path):
    last, _ = fit(tmp_path / "plain.pt")
    averaged, result = fit(tmp_path / "ema.pt", overrides=("student.train.ema_decay=0.5",))
    # The same steps (the average does not feed back into training), but other shipped weights:
    assert any(not torch.equal(a, b) for a, b in zip(last.model.parameters(), averaged.model.parameters()))
    config = load_config(None, TINY)
    info, _, val_set = data_splits(config)
    shipped = evaluate(averaged.model, DataLoader(val_set, batch_size=8),
                       SegmentationEvaluator.for_classes(info.num_classes), torch.device("cpu"))
    assert result.history[-1]["val_miou"] == pytest.approx(shipped.evaluator.scalars()["miou"])
    assert result.history[-1]["val_loss"] == pytest.approx(shipped.loss)


def test_eval_every_evaluates_every_nth_epoch_and_always_the_last(tmp_path):
    _, result = fit(tmp_path / "ckpt.pt", overrides=("student.train.eval_every=2",))
    assert [("val_miou" in row) for row in result.history] == [False, True, True]
    assert result.final_evaluation is not None and "loss" in result.history[0]


def test_the_last_quarter_change_is_the_spread_of_the_evaluated_epochs_from_75_percent_on():
    from stages.common import last_quarter_change

    history = [{"epoch": e, "loss": 1.0, "val_loss": 0.5, "val_miou": m}
               for e, m in zip(range(1, 9), [10, 20, 30, 40, 50, 60.5, 61.0, 60.0])]
    assert last_quarter_change(history) == 1.0  # epochs 6, 7, 8
    sparse = [row if row["epoch"] % 3 == 0 or row["epoch"] == 8 else {"epoch": row["epoch"], "loss": 1.0}
              for row in history]
    assert last_quarter_change(sparse) == 0.5  # epochs 6 and 8 were evaluated
    assert last_quarter_change(sparse[:1]) is None


def test_max_images_trains_on_the_first_images_of_the_train_split_only(tmp_path):
    out = tmp_path / "run"
    assert main(["run", str(ROOT / "configs" / "smoke.yaml"), "--out", str(out), "--until", "train_student_baseline",
                 "data.train_size=64", "teacher.train.epochs=1", "student.train.epochs=1",
                 "student.train.max_images=32"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["teacher"]["steps"] == 64 // 16, "the teacher trains on the whole split"
    assert metrics["student_baseline"]["steps"] == 32 // 16, "the student on its first 32 images"


def test_precise_bn_evaluates_and_ships_statistics_recomputed_over_training_batches_with_the_final_weights(tmp_path):
    no_dropout = "student.model.dropout=0"  # dropout would make the recomputed statistics random
    plain, _ = fit(tmp_path / "plain.pt", overrides=(no_dropout,))
    precise, result = fit(tmp_path / "precise.pt", overrides=(no_dropout, "student.train.precise_bn_batches=6"))
    # Training is unchanged: the same weights, step for step; only the statistics differ.
    for (name, a), b in zip(plain.model.named_parameters(), precise.model.parameters()):
        assert torch.equal(a, b), name
    recomputed = dict(precise.model.named_buffers())
    assert any(not torch.equal(recomputed[name], value) for name, value in plain.model.named_buffers()
               if name.endswith("running_mean"))
    # They are the plain mean over 6 training batches drawn after the last epoch (its 4 batches again,
    # then 2 more, freshly augmented) through the final weights:
    config = load_config(None, [*TINY, no_dropout])
    info, train_set, val_set = data_splits(config)
    data = TrainLoader.build(train_set, config.student.train, TrainingRuntime(), torch.device("cpu"), 0, "test")
    data.start_epoch(config.student.train.epochs - 1)
    list(data.batches())  # the last epoch's training
    update_bn([images for images, _ in [*data.batches(), *data.batches()][:6]], plain.model)
    for name, value in plain.model.named_buffers():
        torch.testing.assert_close(recomputed[name], value, msg=name)
    # ... and they are what was evaluated on val:
    shipped = evaluate(precise.model, DataLoader(val_set, batch_size=8),
                       SegmentationEvaluator.for_classes(info.num_classes), torch.device("cpu"))
    assert result.history[-1]["val_miou"] == pytest.approx(shipped.evaluator.scalars()["miou"])
