"""Every distillation method, specified by the properties its paper promises: a known value or zero
where student and teacher agree, the invariances it has, and gradients that reach the student and
the method's own modules but never the frozen teacher."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.builders import build_distiller, build_student, build_teacher
from pipeline.config import MethodSpec, load_config
from pipeline.distill import available_methods, build_method
from pipeline.distill.methods.afd import AFD
from pipeline.distill.methods.at import at_loss
from pipeline.distill.methods.cwd import cwd_loss
from pipeline.distill.methods.fitnet import FitNet
from pipeline.distill.methods.ickd import ickd_loss
from pipeline.distill.methods.pkt import pkt_loss
from pipeline.distill.methods.rkd import rkd_angle_loss, rkd_distance_loss
from pipeline.distill.methods.sp import sp_loss
from pipeline.distill.registry import method_weight

BASELINES = {"kd", "fitnet", "at", "sp", "pkt", "rkd", "ickd", "cwd", "afd", "letkd", "none"}
TINY = [
    "data.image_size=32",
    "teacher.model={backbone: resnet18, aspp_channels: 16, aspp_rates: [1, 2, 3], decoder_channels: 16, "
    "low_level_channels: 8}",
    "student.model={backbone: mobilenet_v2, width_mult: 0.5, aspp_channels: 16, aspp_rates: [1, 2, 3], "
    "decoder_channels: 8, low_level_channels: 8}",
]


def torch_seed() -> None:
    torch.manual_seed(0)


def test_every_method_is_registered_with_a_summary_and_documented_options():
    methods = available_methods()
    assert BASELINES <= set(methods)
    for name in BASELINES:
        cls = methods[name]
        assert cls.summary and "\n" not in cls.summary, name
        assert cls.default_weight >= 0
        for key, field in cls.Options.model_fields.items():
            assert field.description or key == "teacher_feature", f"{name}.{key} has no description"


def test_a_method_without_a_weight_gets_its_own_default_weight():
    assert method_weight(MethodSpec(name="afd")) == available_methods()["afd"].default_weight
    assert method_weight(MethodSpec(name="afd", weight=0.5)) == 0.5


# ----------------------------------------------------------------------------- gradients
def tiny_distiller(name: str):
    config = load_config(None, [*TINY, f"distill.methods=[{{name: {name}}}]", "distill.ce_weight=0"])
    teacher, student = build_teacher(config), build_student(config)
    artifacts = None
    if name == "letkd":  # any centres of the right shape will do for gradients
        k = config.distill.methods[0].options.get("num_templates", 128)
        artifacts = {"letkd": {"teacher_centers": torch.randn(k, teacher.feature_channels["stage4"])}}
    return build_distiller(config, teacher, student, artifacts)


@pytest.mark.parametrize("name", sorted(BASELINES - {"none"}))
def test_gradients_reach_the_student_and_the_methods_own_modules_never_the_teacher(name):
    torch_seed()
    distiller = tiny_distiller(name)
    distiller.train()
    teacher_state = {k: v.clone() for k, v in distiller.teacher.state_dict().items()}
    images, targets = torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4, 32, 32))
    loss, parts = distiller(images, targets)
    assert set(parts) == {"ce", name} and torch.isfinite(loss)
    loss.backward()  # CE weight is 0: every gradient comes from the method's loss
    assert all(p.grad is None for p in distiller.teacher.parameters()), "the teacher must stay frozen"
    assert all(torch.equal(teacher_state[k], v) for k, v in distiller.teacher.state_dict().items())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.student.parameters())
    for param_name, param in distiller.methods[name].named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{name}.{param_name} gets no gradient"


# ---------------------------------------------------------------------------- FitNet
def test_fitnet_is_zero_with_an_identity_adapter_on_equal_features_and_the_mse_otherwise():
    info = feature_info_of(channels=8)
    method = FitNet(FitNet.Options(), info, info)
    with torch.no_grad():
        method.adapter.weight.copy_(torch.eye(8).view(8, 8, 1, 1))
    f = torch.randn(2, 8, 4, 4)
    assert method({"decoder": f}, {"decoder": f}, None).item() == pytest.approx(0.0, abs=1e-12)
    assert method({"decoder": f + 1.0}, {"decoder": f}, None).item() == pytest.approx(1.0, rel=1e-6)


def feature_info_of(channels: int, names=("stage1", "stage2", "stage3", "stage4", "decoder")):
    from pipeline.distill import FeatureInfo

    return FeatureInfo(channels={n: channels for n in names}, strides={n: 4 for n in names}, num_classes=4)


# -------------------------------------------------------------------------------- AT
def test_at_is_zero_for_equal_maps_and_ignores_scale_and_width():
    f_t = torch.randn(2, 8, 6, 6)
    assert at_loss(f_t, f_t).item() == pytest.approx(0.0, abs=1e-12)
    f_s = torch.randn(2, 3, 6, 6)
    reference = at_loss(f_s, f_t).item()
    assert at_loss(3.0 * f_s, 0.5 * f_t).item() == pytest.approx(reference, rel=1e-5)
    # Duplicating channels leaves the channel mean of f^2 unchanged: the loss does not see widths.
    assert at_loss(torch.cat([f_t, f_t], 1), f_t).item() == pytest.approx(0.0, abs=1e-12)


def test_at_resizes_a_student_map_of_another_resolution():
    assert torch.isfinite(at_loss(torch.randn(2, 3, 3, 3), torch.randn(2, 8, 6, 6)))


# -------------------------------------------------------------------------------- SP
def test_sp_is_zero_for_equal_features_and_ignores_scale():
    f_s, f_t = torch.randn(4, 3, 5, 5), torch.randn(4, 7, 5, 5)
    assert sp_loss(f_t, f_t).item() == pytest.approx(0.0, abs=1e-12)
    assert sp_loss(2.5 * f_s, 0.1 * f_t).item() == pytest.approx(sp_loss(f_s, f_t).item(), rel=1e-5)


def test_sp_known_value_on_two_orthogonal_against_two_parallel_samples():
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # G_s rows: (1, 0), (0, 1)
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # G_t rows: (1, 1)/sqrt2 twice
    expected = 2 * ((1 - 2**-0.5) ** 2 + 0.5) / 4
    assert sp_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------------- PKT
def test_pkt_is_zero_for_equal_features_and_ignores_per_sample_scale():
    f_s, f_t = torch.randn(5, 6, 3, 3), torch.randn(5, 9, 3, 3)
    assert pkt_loss(f_t, f_t).item() == pytest.approx(0.0, abs=1e-12)
    scales = torch.tensor([0.5, 2.0, 3.0, 1.0, 7.0]).view(5, 1, 1, 1)
    assert pkt_loss(f_s * scales, f_t).item() == pytest.approx(pkt_loss(f_s, f_t).item(), rel=1e-5)
    assert pkt_loss(f_s, f_t).item() > 0


# ------------------------------------------------------------------------------- RKD
def test_rkd_is_zero_for_equal_features_and_ignores_scale_and_translation():
    e_s, e_t = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 11, dtype=torch.float64)
    for loss in (rkd_distance_loss, rkd_angle_loss):
        assert loss(e_t, e_t).item() == pytest.approx(0.0, abs=1e-12)
        reference = loss(e_s, e_t).item()
        assert reference > 0
        assert loss(4.0 * e_s + 3.0, e_t).item() == pytest.approx(reference, rel=1e-9)
        assert loss(e_s, 0.2 * e_t - 1.0).item() == pytest.approx(reference, rel=1e-9)


# ------------------------------------------------------------------------------ ICKD
def test_ickd_is_zero_for_equal_features_and_ignores_scale():
    f_s, f_t = torch.randn(2, 6, 4, 4), torch.randn(2, 6, 4, 4)
    assert ickd_loss(f_t, f_t).item() == pytest.approx(0.0, abs=1e-12)
    assert ickd_loss(3.0 * f_s, 0.3 * f_t).item() == pytest.approx(ickd_loss(f_s, f_t).item(), rel=1e-5)


# ------------------------------------------------------------------------------- CWD
def test_cwd_is_zero_for_equal_maps_and_ignores_a_per_channel_shift():
    s, t = torch.randn(2, 5, 6, 6), torch.randn(2, 5, 6, 6)
    assert cwd_loss(t, t, 4.0).item() == pytest.approx(0.0, abs=1e-7)
    shift = torch.randn(2, 5, 1, 1) * 10
    assert cwd_loss(s + shift, t - shift, 4.0).item() == pytest.approx(cwd_loss(s, t, 4.0).item(), rel=1e-4)


def test_cwd_known_value_on_one_channel_with_two_positions():
    student = torch.zeros(1, 1, 1, 2)  # uniform over the two positions
    teacher = torch.tensor([math.log(3.0), 0.0]).view(1, 1, 1, 2)  # (0.75, 0.25) at T=1
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert cwd_loss(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-6)
    p = torch.softmax(torch.tensor([math.log(3.0) / 2, 0.0]), 0)
    assert cwd_loss(student, teacher, 2.0).item() == pytest.approx(4 * float((p * (p / 0.5).log()).sum()), rel=1e-6)


# ------------------------------------------------------------------------------- AFD
def afd_features(channels: list[int], sizes: list[int], batch: int = 3) -> list[torch.Tensor]:
    return [torch.randn(batch, c, s, s) for c, s in zip(channels, sizes)]


def afd_method(student_channels: list[int], teacher_channels: list[int]) -> AFD:
    from pipeline.distill import FeatureInfo

    def info(channels):
        names = [f"stage{i + 1}" for i in range(len(channels))]
        return FeatureInfo(dict(zip(names, channels)), dict.fromkeys(names, 4), 4)

    names_s = tuple(f"stage{i + 1}" for i in range(len(student_channels)))
    names_t = tuple(f"stage{i + 1}" for i in range(len(teacher_channels)))
    options = AFD.Options(student_features=names_s, teacher_features=names_t, qk_dim=16)
    return AFD(options, info(student_channels), info(teacher_channels))


def test_afd_attention_is_a_distribution_over_the_student_features():
    torch_seed()
    method = afd_method([4, 6, 8], [5, 7, 9, 11]).train()
    alpha = method.attention(afd_features([4, 6, 8], [8, 4, 2]), afd_features([5, 7, 9, 11], [8, 4, 2, 2]))
    assert alpha.shape == (3, 4, 3)  # (B, T, S)
    assert torch.all(alpha >= 0)
    assert torch.allclose(alpha.sum(dim=2), torch.ones(3, 4), atol=1e-6)


def test_afd_is_zero_when_every_student_value_map_equals_the_teachers():
    torch_seed()
    teacher = torch.randn(3, 5, 4, 4)
    # A student map with the same channel energy at every position (a channel permutation of the
    # teacher's feature, or the feature itself) has the teacher's value map, whatever the attention.
    students = [teacher[:, torch.randperm(5)], teacher.clone()]
    method = afd_method([5, 5], [5]).train()
    loss = method({"stage1": students[0], "stage2": students[1]}, {"stage1": teacher}, None)
    assert loss.item() == pytest.approx(0.0, abs=1e-10)


def test_afd_loss_is_the_attention_weighted_value_distance():
    torch_seed()
    method = afd_method([4, 6], [5, 7]).train()
    f_s, f_t = afd_features([4, 6], [4, 2]), afd_features([5, 7], [4, 2])
    loss = method({"stage1": f_s[0], "stage2": f_s[1]}, {"stage1": f_t[0], "stage2": f_t[1]}, None)
    alpha = method.attention(f_s, f_t)
    expected = sum((alpha[:, t] * AFD.value_distances(f_s, f_t[t])).sum(1).mean() for t in range(2))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


# ------------------------------------------------------------------------- building
def test_methods_name_a_missing_feature_and_the_available_ones():
    student = teacher = feature_info_of(8, names=("stage4",))
    with pytest.raises(ValueError, match="taps student feature 'decoder'.*available: stage4"):
        build_method(MethodSpec(name="fitnet"), student, teacher)


def test_relation_methods_refuse_a_batch_of_one():
    info = feature_info_of(4)
    method = build_method(MethodSpec(name="sp"), info, info)
    with pytest.raises(ValueError, match="batch_size >= 2"):
        method({"stage4": torch.randn(1, 4, 2, 2)}, {"stage4": torch.randn(1, 4, 2, 2)}, None)


def test_unknown_option_names_the_method_and_suggests():
    from pipeline.config import ConfigError
    from pipeline.orchestration.preflight import preflight

    with pytest.raises(ConfigError, match="did you mean 'num_templates'"):
        preflight(load_config(None, ["distill.methods=[{name: letkd, num_template: 8}]"]))


def test_only_letkd_changes_the_student_architecture():
    for name in sorted(BASELINES):
        config = load_config(None, [*TINY, f"distill.methods=[{{name: {name}}}]"])
        plain = build_student(config, with_methods=False)
        student = build_student(config)
        count = sum(p.numel() for p in student.parameters())
        if name == "letkd":
            assert not isinstance(student.neck, nn.Identity)
            assert count > sum(p.numel() for p in plain.parameters())
        else:
            assert isinstance(student.neck, nn.Identity)
            assert count == sum(p.numel() for p in plain.parameters())
