"""Every fault a user can cause ends in one clear message on stderr, exit code 2, no traceback
(unless --debug or PIPELINE_DEBUG=1), and nothing already made is lost or taken for done."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import DataConfig
from pipeline.data.check import check_dataset_files
from pipeline.measurement.validation import verdict
from pipeline.orchestration.cli import main
from pipeline.orchestration.runner import PipelineError
from pipeline.orchestration.stage import RECORD_NAME
from pipeline.orchestration.summary import status_notes

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
TINY = ["teacher.train.epochs=1", "data.train_size=32", "data.val_size=8", "teacher.train.eval_every=1"]


def errors_of(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_an_out_path_that_is_a_file_is_named(tmp_path, capsys):
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    assert main(["run", SMOKE, "--out", str(existing)]) == 2
    assert f"run folder {existing} is a file; pass --out with a folder path" in errors_of(capsys)
    assert existing.read_text() == "mine"


def test_a_corrupt_onnx_file_is_named_by_bench(tmp_path, capsys):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage" * 10)
    assert main(["bench", str(broken)]) == 2
    assert f"{broken} is not a readable ONNX model" in errors_of(capsys)


def test_a_diverging_loss_stops_the_stage_naming_stage_step_and_fix(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", SMOKE, "--out", str(out), *TINY, "teacher.train.lr=1e30", "teacher.train.warmup_steps=0"]) == 2
    err = errors_of(capsys)
    assert "stage 'train_teacher' failed: TrainingDiverged: teacher: loss became" in err
    assert "at step" in err and "lower the learning rate (train.lr 1e+30)" in err
    assert "finished stages are kept" in err
    assert not (out / "train_teacher" / RECORD_NAME).exists()


def test_debug_or_pipeline_debug_shows_the_traceback(monkeypatch):
    with pytest.raises(PipelineError, match="is a file"):
        main(["run", SMOKE, "--out", __file__, "--debug"])
    monkeypatch.setenv("PIPELINE_DEBUG", "1")
    with pytest.raises(PipelineError, match="is a file"):
        main(["run", SMOKE, "--out", __file__])


# ------------------------------------------------------------------------------ data checks
def write_folder_dataset(root: Path, train: int = 3, val: int = 2) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("background\nroad\n")
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for index in range(count):
            image = root / "images" / split / f"{split}{index}.png"
            mask = root / "masks" / split / f"{split}{index}.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            mask.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(image)
            Image.fromarray(rng.integers(0, 2, (48, 48), dtype=np.uint8), mode="L").save(mask)


def test_bad_samples_are_all_reported_before_any_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = tmp_path / "data"
    write_folder_dataset(data)
    Image.fromarray(np.full((48, 48), 7, dtype=np.uint8), mode="L").save(data / "masks" / "train" / "train1.png")
    (data / "images" / "val" / "val0.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((40, 48), dtype=np.uint8), mode="L").save(data / "masks" / "val" / "val1.png")
    out = tmp_path / "run"
    assert main(["run", SMOKE, "--out", str(out), "data.dataset=folder", f"data.root={data}"]) == 2
    err = errors_of(capsys)
    assert "has 3 problem(s); nothing was trained" in err
    assert "mask ids outside the class list (1): masks/train/train1.png (ids 7 (classes are 0..1" in err
    assert "unreadable image (1): images/val/val0.png" in err
    assert "mask size differs from its image (1): masks/val/val1.png (mask 48x40, image val1.png 48x48)" in err
    assert not out.exists()


def test_an_empty_split_is_reported_with_the_other_problems(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write_folder_dataset(tmp_path, val=0)
    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "masks" / "val").mkdir(parents=True)
    with pytest.raises(Exception, match=r"unusable split \(1\): val \(expected images"):
        check_dataset_files(DataConfig(dataset="folder", root=tmp_path))


def test_a_clean_dataset_is_read_once_and_again_after_a_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write_folder_dataset(tmp_path)
    cfg = DataConfig(dataset="folder", root=tmp_path)
    assert check_dataset_files(cfg) == 5
    assert check_dataset_files(cfg) == 0  # remembered
    (tmp_path / "images" / "val" / "val1.png").write_bytes(b"broken")
    with pytest.raises(Exception, match=r"unreadable image \(1\): images/val/val1.png"):
        check_dataset_files(cfg)


# ------------------------------------------------------------------- failed checks say why
def test_a_failed_int8_validation_names_metric_value_tolerance_and_what_to_try():
    failed = verdict("int8", "mIoU", -1.04, 1.0)
    assert failed["status"] == "validation failed"
    assert failed["reason"] == "mIoU -1.04 points vs PyTorch, beyond the int8 tolerance of -1"
    assert "quantize.reduce_range: true" in failed["hint"] and "validate.int8_miou_tolerance" in failed["hint"]
    assert verdict("int8", "mIoU", -0.99, 1.0) == {"status": "passed"}
    assert verdict("int8", "mIoU", +3.0, 1.0) == {"status": "passed"}


def test_fp32_fails_on_parity_even_when_the_metric_holds():
    failed = verdict("fp32", "mIoU", 0.0, 0.05, max_abs_diff=3e-3, atol=1e-4)
    assert failed["reason"] == "max abs logit difference 3.00e-03 > validate.atol 0.0001"


def test_the_summary_lists_every_backend_that_did_not_pass_with_its_reason_and_hint():
    metrics = {"backends": {
        "onnxruntime-fp32": {"status": "passed"},
        "onnxruntime-int8": {"status": "validation failed", **verdict("int8", "mIoU", -2.0, 1.0)},
        "tensorrt-fp16": {"status": "skipped", "reason": "TensorRT is not installed", "install_hint": "pip install x"},
        "tensorrt-int8": {"status": "export failed", "reason": "RuntimeError: parser failed"},
    }}
    notes = status_notes(metrics)
    assert len(notes) == 3 and "--debug" in notes[2] and "parser failed" in notes[2]
    assert notes[0].startswith("onnxruntime-int8: validation failed: mIoU -2.00 points") and "to do: try" in notes[0]
    assert notes[1] == "tensorrt-fp16: skipped: TensorRT is not installed; to do: pip install x"


def test_output_piped_into_a_reader_that_stops_early_is_not_an_error():
    # `true` exits before the pipeline prints anything, so every write meets a closed pipe.
    done = subprocess.run(f"{sys.executable} -m pipeline methods | true", shell=True, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert "error" not in done.stderr.lower(), done.stderr
