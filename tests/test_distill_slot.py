"""The method slot: KD's known values, a frozen teacher, and gradients that reach only the student
and the methods' own heads."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.config import MethodSpec, load_config
from pipeline.distill import Distiller, available_methods, build_method, feature_info
from pipeline.distill.methods.kd import kd_loss
from pipeline.models import build_segmentation_model


def test_kd_is_zero_when_student_matches_teacher_and_positive_otherwise():
    logits = torch.randn(2, 5, 4, 4)
    assert kd_loss(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-7)
    assert kd_loss(logits, torch.randn(2, 5, 4, 4), 4.0).item() > 0


def test_kd_matches_a_hand_computed_value():
    student = torch.tensor([[0.0, 0.0]]).view(1, 2, 1, 1)
    teacher = torch.tensor([[math.log(3.0), 0.0]]).view(1, 2, 1, 1)  # p_t = (0.75, 0.25) at T=1
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_loss(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # T^2 scaling: at T=2 the teacher distribution softens and the loss is multiplied by 4
    p = torch.softmax(torch.tensor([math.log(3.0) / 2, 0.0]), 0)
    expected_t2 = 4 * float((p * (p / 0.5).log()).sum())
    assert kd_loss(student, teacher, 2.0).item() == pytest.approx(expected_t2, rel=1e-6)


def test_builtin_methods_are_registered():
    assert {"none", "kd"} <= set(available_methods())


def tiny(backbone: str) -> nn.Module:
    cfg = load_config(None, [f"student.model.backbone={backbone}", "student.model.aspp_channels=16",
                             "student.model.decoder_channels=16", "student.model.low_level_channels=8"])
    return build_segmentation_model(cfg.student.model, num_classes=4)


def test_gradients_reach_the_student_never_the_teacher():
    student, teacher = tiny("mobilenet_v2"), tiny("resnet18")
    methods = [(1.0, build_method(MethodSpec(name="kd", temperature=2.0), feature_info(student), feature_info(teacher)))]
    distiller = Distiller(student, teacher, methods)
    distiller.train()
    assert not teacher.training, "the frozen teacher keeps eval-mode BN by default"
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    loss, parts = distiller(torch.randn(2, 3, 32, 32), torch.randint(0, 4, (2, 32, 32)))
    assert set(parts) == {"ce", "kd"}
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items()), "BN stats must not move"


def test_teacher_train_mode_quirk_is_opt_in():
    distiller = Distiller(tiny("mobilenet_v2"), tiny("resnet18"), [], teacher_mode="train")
    distiller.train()
    assert distiller.teacher.training
    distiller.eval()
    assert not distiller.teacher.training


def count_teacher_calls(distiller: Distiller) -> list[int]:
    """A counter of the teacher's forward passes (the Distiller calls ``forward_features``)."""
    calls = [0]
    forward_features = distiller.teacher.forward_features

    def counted(images: torch.Tensor):
        calls[0] += 1
        return forward_features(images)

    distiller.teacher.forward_features = counted
    return calls


def test_a_ce_only_student_never_runs_the_teacher():
    student, teacher = tiny("mobilenet_v2"), tiny("resnet18")
    plain = Distiller(student, teacher, [(1.0, build_method(MethodSpec(name="none"), feature_info(student),
                                                            feature_info(teacher)))])
    plain.eval()  # no dropout, so the loss can be compared with the student's own
    calls = count_teacher_calls(plain)
    images, targets = torch.randn(2, 3, 32, 32), torch.randint(0, 4, (2, 32, 32))
    loss, parts = plain(images, targets)
    assert calls == [0] and not plain.needs_teacher
    expected = torch.nn.functional.cross_entropy(student(images), targets, ignore_index=255)
    assert torch.allclose(loss, expected) and set(parts) == {"ce", "none"}

    kd = Distiller(student, teacher, [(1.0, build_method(MethodSpec(name="kd"), feature_info(student),
                                                         feature_info(teacher)))])
    calls = count_teacher_calls(kd)
    kd(images, targets)
    assert calls == [1] and kd.needs_teacher


def kd_distiller(warmup_steps: int) -> Distiller:
    torch.manual_seed(0)
    student, teacher = tiny("mobilenet_v2"), tiny("resnet18")
    methods = [(0.5, build_method(MethodSpec(name="kd"), feature_info(student), feature_info(teacher)))]
    return Distiller(student, teacher, methods, warmup_steps=warmup_steps)


def test_warmup_ramps_the_distillation_terms_linearly_and_leaves_ce_alone():
    images, targets = torch.randn(2, 3, 32, 32), torch.randint(0, 4, (2, 32, 32))
    full = kd_distiller(0).train()
    warm = kd_distiller(4).train()
    torch.manual_seed(1)  # same weights, batch and dropout masks: only the scale differs
    _, reference = full(images, targets)
    for step in range(6):
        torch.manual_seed(1)
        _, parts = warm(images, targets)
        assert torch.allclose(parts["ce"], reference["ce"])
        assert torch.allclose(parts["kd"], min(1.0, (step + 1) / 4) * reference["kd"], rtol=1e-5)
    assert int(warm.steps_taken) == 6


def test_evaluation_does_not_advance_the_warmup():
    warm = kd_distiller(4).eval()
    with torch.no_grad():
        warm(torch.randn(2, 3, 32, 32), torch.randint(0, 4, (2, 32, 32)))
    assert int(warm.steps_taken) == 0 and float(warm.distill_scale()) == pytest.approx(0.25)


def test_a_resumed_distiller_continues_its_warmup_and_strip_drops_the_counter():
    from stages.strip import strip_state_dict

    warm = kd_distiller(10).train()
    for _ in range(3):
        warm(torch.randn(2, 3, 32, 32), torch.randint(0, 4, (2, 32, 32)))
    resumed = kd_distiller(10)
    resumed.load_state_dict(warm.state_dict(), strict=True)
    assert float(resumed.distill_scale()) == pytest.approx(0.4)
    assert "steps_taken" not in strip_state_dict(warm.state_dict())


def test_warmup_steps_come_from_the_config_and_must_not_be_negative():
    from pipeline.builders import build_distiller
    from pipeline.config import ConfigError

    config = load_config(None, ["distill.warmup_steps=7", "distill.methods=[{name: kd}]"])
    assert build_distiller(config, tiny("resnet18"), tiny("mobilenet_v2")).warmup_steps == 7
    with pytest.raises(ConfigError, match="warmup_steps"):
        load_config(None, ["distill.warmup_steps=-1"])
