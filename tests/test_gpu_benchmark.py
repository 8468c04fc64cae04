"""The GPU training benchmark command refuses CPU by default and, allowed, writes its figures."""

import json

import pytest
import torch

from pipeline.benchmarks.gpu_training import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_refuses_cpu_without_allow_cpu(capsys):
    assert main(["--out", "unused"]) == 2
    assert "no CUDA device is visible" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_cpu_run_writes_json_and_markdown(tmp_path):
    out = tmp_path / "gpu_training"
    assert main(["--allow-cpu", "--size", "33", "--batch", "2", "--steps", "1", "--warmup", "0", "--tat-size", "9",
                 "--out", str(out)]) == 0
    figures = json.loads(out.with_suffix(".json").read_text())
    assert figures["results"]["teacher_training"]["images_per_second"] > 0
    assert figures["results"]["tat_loss_sdpa"]["positions"] == 81
    assert "teacher_training" in out.with_suffix(".md").read_text()
