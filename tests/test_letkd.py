"""LetKD: the KD layer the student keeps (cosine templates, residual), the teacher's k-means
centres as a pipeline artifact, and the KL supervision in K-space."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pipeline.builders import build_distiller, build_student, build_teacher, teacher_centers_requests
from pipeline.config import load_config
from pipeline.distill.kmeans import kmeans
from pipeline.distill.methods.letkd import letkd_loss, letkd_targets
from pipeline.models.kd_layer import CosineConv1x1, KDLayer
from stages.teacher_centers import STAGE as CENTERS_STAGE
from stages.teacher_centers import teacher_vectors
from tests.test_methods import TINY


# ------------------------------------------------------------------------------ the layer
def test_cosine_conv_ignores_input_scale_and_is_bounded_by_its_scale():
    torch.manual_seed(0)
    conv = CosineConv1x1(6, 10, scale=3.0)
    x = torch.randn(2, 6, 4, 4)
    assert torch.allclose(conv(x), conv(7.0 * x), atol=1e-5)
    assert conv(x).abs().max() <= 3.0 + 1e-5
    assert conv.scale.item() == 3.0


def test_kd_layer_is_a_residual_correction_with_the_papers_initial_scales():
    torch.manual_seed(0)
    layer = KDLayer(channels=6, templates=10, residual_ratio=0.0).eval()
    x = torch.randn(2, 6, 4, 4)
    out, extra = layer.forward_features(x)
    assert torch.equal(out, x), "with r = 0 the layer passes its input through"
    assert extra["kd_scores"].shape == (2, 10, 4, 4)
    assert layer.scores.scale.item() == 3.0 and layer.value.scale.item() == 1.0
    layer.residual_ratio = 0.5
    value = layer.value(torch.relu(layer.norm(layer.scores(x))))
    assert torch.allclose(layer(x), x + 0.5 * value)


def test_the_student_exposes_the_kd_scores_and_keeps_its_width():
    config = load_config(None, [*TINY, "distill.methods=[{name: letkd, num_templates: 12}]"])
    student = build_student(config)
    assert student.feature_channels["kd_scores"] == 12
    logits, features = student.forward_features(torch.randn(2, 3, 32, 32))
    assert features["kd_scores"].shape[1] == 12
    assert features["neck"].shape == features["stage4"].shape
    assert logits.shape == (2, student.num_classes, 32, 32)


# ------------------------------------------------------------------------------- k-means
def test_kmeans_finds_well_separated_clusters_and_is_deterministic():
    generator = torch.Generator().manual_seed(0)
    truth = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(50, 2, generator=generator) for c in truth])
    result = kmeans(x, 3, iterations=20, seed=1)
    for centre in truth:
        assert (result.centers - centre).norm(dim=1).min() < 0.1
    assert result.inertia < 0.05
    assert torch.equal(result.centers, kmeans(x, 3, iterations=20, seed=1).centers)


def test_kmeans_refuses_fewer_vectors_than_centres():
    with pytest.raises(ValueError, match="at least k=8 vectors, got 5"):
        kmeans(torch.randn(5, 3), 8)


# ------------------------------------------------------------------------- supervision
def test_targets_pick_the_nearest_centre_and_the_loss_vanishes_when_scores_agree():
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    feature = torch.tensor([[10.0, 0.0], [0.0, 10.0]]).t().reshape(1, 2, 1, 2)  # two positions
    log_p = letkd_targets(feature, centers)
    assert log_p.shape == (1, 3, 1, 2)
    assert log_p.exp()[0, :, 0, 0].argmax() == 1 and log_p.exp()[0, :, 0, 1].argmax() == 2
    assert torch.allclose(log_p.exp().sum(1), torch.ones(1, 1, 2))
    # softmax(scores) = p (scores = log p + any constant per position) -> KL = 0
    assert letkd_loss(log_p + 4.0, log_p).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(1, 3, 1, 2)
    expected = (log_p.exp() * (log_p - torch.log(torch.tensor(1 / 3)))).sum(1).mean()
    assert letkd_loss(uniform, log_p).item() == pytest.approx(expected.item(), rel=1e-6)


def test_letkd_trains_across_different_teacher_and_student_strides_and_widths():
    config = load_config(None, [*TINY, "teacher.model.output_stride=8", "distill.methods=[{name: letkd, num_templates: 6}]"])
    teacher, student = build_teacher(config), build_student(config)
    assert teacher.feature_channels["stage4"] != student.feature_channels["stage4"]
    centers = torch.randn(6, teacher.feature_channels["stage4"])
    distiller = build_distiller(config, teacher, student, {"letkd": {"teacher_centers": centers}}).train()
    loss, parts = distiller(torch.randn(2, 3, 32, 32), torch.randint(0, 4, (2, 32, 32)))
    assert torch.isfinite(parts["letkd"]) and parts["letkd"] >= 0


def test_letkd_without_centres_says_where_they_come_from_and_checks_their_shape():
    config = load_config(None, [*TINY, "distill.methods=[{name: letkd, num_templates: 6}]"])
    teacher, student = build_teacher(config), build_student(config)
    distiller = build_distiller(config, teacher, student)  # loading/stripping needs no centres
    with pytest.raises(RuntimeError, match="teacher_centers"):
        distiller(torch.randn(2, 3, 32, 32), torch.randint(0, 4, (2, 32, 32)))
    with pytest.raises(ValueError, match="re-run the teacher_centers stage"):
        build_distiller(config, teacher, student, {"letkd": {"teacher_centers": torch.randn(5, 3)}})
    assert not any(k.endswith("centers") for k in distiller.state_dict()), "centres are an artifact, not weights"


def test_letkd_without_its_layer_in_the_student_is_an_error_that_says_how_to_build_it():
    config = load_config(None, [*TINY, "distill.methods=[{name: letkd, num_templates: 6}]"])
    with pytest.raises(ValueError, match="build_student"):
        build_distiller(config, build_teacher(config), build_student(config, with_methods=False))


# ----------------------------------------------------------------------- the stage
def test_the_centres_stage_runs_only_when_a_method_asks_for_centres():
    kd = load_config(None, ["distill.methods=[{name: kd}]"])
    letkd = load_config(None, ["distill.methods=[{name: letkd, num_templates: 64, kmeans_max_vectors: 1000}]"])
    assert not CENTERS_STAGE.enabled(kd) and teacher_centers_requests(kd) == {}
    request = teacher_centers_requests(letkd)["letkd"]
    assert CENTERS_STAGE.enabled(letkd)
    assert (request.feature, request.num_centers, request.max_vectors) == ("stage4", 64, 1000)


def test_teacher_vectors_take_every_position_or_a_seeded_subsample():
    config = load_config(None, TINY)
    teacher = build_teacher(config)
    images = torch.randn(5, 3, 32, 32)
    loader = DataLoader(TensorDataset(images, torch.zeros(5)), batch_size=2)
    every = teacher_vectors(teacher, loader, "stage4", 5, None, 0, torch.device("cpu"))
    assert every.shape == (5 * 2 * 2, teacher.feature_channels["stage4"])  # 32 px at stride 16: 2x2
    sample = teacher_vectors(teacher, loader, "stage4", 5, 7, 0, torch.device("cpu"))
    assert sample.shape[0] == 7
    assert all((every == row).all(dim=1).any() for row in sample), "a subsample of the real vectors"
    assert torch.equal(sample, teacher_vectors(teacher, loader, "stage4", 5, 7, 0, torch.device("cpu")))
