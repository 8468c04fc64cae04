"""TaT in the pipeline's method slot: registered methods, config errors that say what to change,
and a Distiller that trains the student and the projections (never the teacher); the public-API
example in docs/tat.md runs in tests/test_readme.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from pipeline.builders import build_distiller, build_student, build_teacher, check_distillation
from pipeline.config import ConfigError, load_config
from pipeline.distill import available_methods
from pipeline.orchestration.preflight import preflight

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def test_tat_methods_are_registered():
    assert {"tat", "tat_patch", "tat_anchor", "tat_seg"} <= set(available_methods())


def test_default_and_smoke_pipelines_distil_with_tat_patch_and_anchor():
    for name in ("default.yaml", "default_plateau.yaml", "smoke.yaml"):
        config = load_config(ROOT / "configs" / name)
        [method] = config.distill.methods
        assert method.name == "tat_seg" and method.patch_weight > 0 and method.anchor_weight > 0
        check_distillation(config)  # the chosen patches/groups/anchors fit the feature size


@pytest.mark.parametrize("methods, message", [
    ("[{name: tat_patch, patches: [3, 3], groups: 4}]", "groups=4 must divide the number of patches n*m = 9"),
    ("[{name: tat_patch, patchs: [2, 2]}]", "did you mean 'patches'"),
    ("[{name: tat_anchor, anchors: [0, 2]}]", "anchors are counts"),
    ("[{name: tat, query: both}]", "distill.methods[0].query"),
])
def test_settings_that_cannot_work_fail_in_the_preflight(methods, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        preflight(load_config(SMOKE, [f"distill.methods={methods}"]))


@pytest.mark.parametrize("overrides, message", [
    (["distill.methods=[{name: tat_patch, patches: [16, 16], groups: 4}]"],
     "distill.methods[0] (tat_patch): patches=[16, 16] is more patches than the 8x8 'decoder' feature"),
    (["distill.methods=[{name: kd}, {name: tat_anchor, anchors: 9}]"],
     "distill.methods[1] (tat_anchor): anchors=[9, 9] is more anchors than the 8x8 'decoder' feature"),
    (["distill.methods=[{name: tat, parametric: false, align: false}]", "student.model.decoder_channels=16"],
     "the student has 16 channels and the teacher 32; set align=True"),
    (["distill.methods=[{name: tat, teacher_feature: stage4}]"], "features of equal stride"),
    (["distill.methods=[{name: tat, heads: 3}]"], "heads=3 must divide the teacher's 32 channels"),
])
def test_settings_that_do_not_fit_the_models_fail_before_training(overrides, message):
    config = load_config(SMOKE, ["data.image_size=32", *overrides])  # valid on its own ...
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_distillation(config)  # ... but not with these models at this image size


def test_run_command_rejects_a_bad_patch_grid_before_any_work(tmp_path, capsys):
    from pipeline.orchestration.cli import main

    out = tmp_path / "run"
    assert main(["run", str(SMOKE), "--out", str(out), "data.image_size=32",
                 "distill.methods=[{name: tat_patch, patches: 9, groups: 1}]"]) == 2
    assert "set patches to at most [8, 8]" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("query", ["student", "teacher"])
def test_distiller_trains_the_student_and_projections_never_the_teacher(query):
    config = load_config(SMOKE, [
        "distill.methods=[{name: tat_patch, patches: 2, groups: 2, query: %s}, {name: tat_anchor, anchors: 4}, "
        "{name: tat, heads: 2, per_image: true}]" % query,
    ])
    torch.manual_seed(0)
    distiller = build_distiller(config, build_teacher(config), build_student(config))
    distiller.train()
    before = {k: v.clone() for k, v in distiller.teacher.state_dict().items()}
    loss, parts = distiller(torch.randn(2, 3, 32, 32), torch.randint(0, 4, (2, 32, 32)))
    assert set(parts) == {"ce", "tat_patch", "tat_anchor", "tat"}
    assert all(value.item() > 0 for value in parts.values())
    loss.backward()
    assert all(p.grad is None for p in distiller.teacher.parameters())
    for name in ("tat_patch", "tat_anchor", "tat"):
        projections = list(distiller.methods[name].parameters())
        assert projections and all(p.grad is not None for p in projections)
    assert distiller.student.head.fuse2[0].weight.grad.abs().sum() > 0, "TaT reaches the decoder feature"
    assert all(torch.equal(before[k], v) for k, v in distiller.teacher.state_dict().items())
    # The student holds no TaT parameters: stripping is dropping the methods.
    assert not any("gamma" in key or "theta" in key for key in distiller.student.state_dict())
