"""The paper's segmentation configurations carry docs/METHODS.md's hyperparameters, and one of them
starts training on a folder in the Pascal VOC layout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_datasets_real import write_voc

from pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "paper"
# (config, dataset, student, student batch, patches, groups, anchors, patch weight, anchor weight)
PAPER = [
    ("voc_r101_r18", "voc", "resnet18", 16, [16, 16], 64, [32, 32], 0.1, 0.04),
    ("voc_r101_mbv2", "voc", "mobilenet_v2", 12, [32, 32], 1024, [64, 64], 0.1, 0.05),
    ("cocostuff_r101_r18", "cocostuff10k", "resnet18", 16, [32, 32], 512, [32, 32], 0.6, 0.6),
    ("cocostuff_r101_mbv2", "cocostuff10k", "mobilenet_v2", 12, [16, 16], 64, [32, 32], 0.4, 0.4),
]


def tat_overrides() -> list[str]:
    """The paper's TaT settings scaled to the 16x16 decoder feature of the tests' 64 px crops."""
    return ["distill.methods=[{name: tat_patch, weight: 0.1, patches: [4, 4], groups: 16}, "
            "{name: tat_anchor, weight: 0.05, anchors: [8, 8]}]"]


@pytest.mark.parametrize("name,dataset,student,batch,patches,groups,anchors,w_patch,w_anchor", PAPER)
def test_paper_config_holds_the_published_hyperparameters(name, dataset, student, batch, patches, groups, anchors,
                                                          w_patch, w_anchor):
    raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    methods = {m["name"]: m for m in raw["distill"]["methods"]}
    assert methods["tat_patch"] == {"name": "tat_patch", "weight": w_patch, "patches": patches, "groups": groups}
    assert methods["tat_anchor"] == {"name": "tat_anchor", "weight": w_anchor, "anchors": anchors}

    config = load_config(CONFIGS / f"{name}.yaml", tat_overrides())
    assert config.data.dataset == dataset and config.data.image_size == 513
    assert config.teacher.model.backbone == "resnet101" and config.student.model.backbone == student
    assert str(config.teacher.model.pretrained) == "weights/resnet101-imagenet.pth"
    assert str(config.student.model.pretrained) == f"weights/{student}-imagenet.pth"
    for model in (config.teacher.model, config.student.model):
        assert (model.arch, model.output_stride, model.aspp_rates) == ("deeplabv3plus", 16, (6, 12, 18))
    for train, expected_batch in ((config.teacher.train, 16), (config.student.train, batch)):
        assert (train.epochs, train.batch_size, train.optimizer, train.schedule) == (100, expected_batch, "sgd", "cosine")
        assert (train.momentum, train.nesterov, train.weight_decay, train.head_lr_mult) == (0.9, True, 5e-4, 10.0)


@pytest.mark.slow
def test_voc_paper_config_starts_training_on_a_voc_layout_folder(tmp_path):
    write_voc(tmp_path / "voc")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "pipeline", "run", "configs/paper/voc_r101_mbv2.yaml", f"data.root={tmp_path / 'voc'}",
               "--out", str(out), "--until", "train_teacher", "teacher.train.epochs=1", "teacher.train.batch_size=2",
               "data.image_size=64", "data.workers=0", "teacher.model.backbone=resnet18",
               "teacher.model.pretrained=null", "run.device=cpu", "run.threads=1", *tat_overrides()]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "[teacher] epoch 1/1" in done.stdout
    assert (out / "train_teacher" / "model.pt").is_file()


def test_voc_paper_config_on_a_wrong_root_says_where_vocdevkit_belongs(tmp_path):
    command = [sys.executable, "-m", "pipeline", "run", "configs/paper/voc_r101_mbv2.yaml", f"data.root={tmp_path}",
               "--out", str(tmp_path / "run"), "--until", "train_teacher", *tat_overrides()]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0
    assert "expected VOCdevkit/VOC2012 under" in done.stderr and "set data.root to the folder that contains VOCdevkit" \
        in done.stderr
