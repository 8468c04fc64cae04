"""Classifiers keep the segmentation models' protocol (logits, named feature taps, channels,
strides, parameter groups), so the Distiller and every method work on them unchanged."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from pipeline.config import MethodSpec
from pipeline.distill import Distiller, build_method, feature_info
from pipeline.models.classification import build_classification_model, load_pretrained_classifier

K = 7


@pytest.mark.parametrize("backbone, stem, size, stage4", [
    ("resnet18", "imagenet", 64, (512, 2, 2)),
    ("resnet18", "cifar", 32, (512, 4, 4)),
    ("resnet50", "cifar", 32, (2048, 4, 4)),
    ("mobilenet_v2", "imagenet", 64, (1280, 2, 2)),
    ("mobilenet_v2", "cifar", 32, (1280, 4, 4)),
])
def test_logits_and_feature_taps_match_the_declared_channels_and_strides(backbone, stem, size, stage4):
    model = build_classification_model(backbone, K, stem=stem).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        logits, features = model.forward_features(x)
        assert torch.equal(model(x), logits)
    assert logits.shape == (2, K)
    assert tuple(features["stage4"].shape[1:]) == stage4
    for name in ("stage1", "stage2", "stage3", "stage4", "neck"):
        assert features[name].shape[1] == model.feature_channels[name]
        assert features[name].shape[-1] * model.feature_strides[name] == size
    assert features["pooled"].shape == (2, model.feature_channels["pooled"])
    assert model.feature_strides["pooled"] == 0


def test_parameter_groups_split_backbone_and_classifier_exactly():
    model = build_classification_model("mobilenet_v2", K, width_mult=0.5)
    backbone, head = model.parameter_groups()
    assert {id(p) for p in head} == {id(p) for p in model.classifier.parameters()}
    assert len(backbone) + len(head) == len(list(model.parameters()))


def test_torchvision_weights_load_whole_when_the_classifier_fits_and_without_it_otherwise(tmp_path):
    reference = torchvision.models.resnet18(num_classes=K)
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    model = build_classification_model("resnet18", K, pretrained=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), reference.eval()(x))  # same keys, same network
    finetune = build_classification_model("resnet18", 3)
    assert load_pretrained_classifier(finetune, path) == ["fc.bias", "fc.weight"]
    assert torch.equal(finetune.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)


def test_weights_that_do_not_fit_are_an_error_naming_the_mismatch(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)  # 7x7 stem
    with pytest.raises(ValueError, match=r"shape mismatches .*conv1\.weight"):
        build_classification_model("resnet18", K, stem="cifar", pretrained=path)
    with pytest.raises(FileNotFoundError, match="pretrained weights not found"):
        build_classification_model("resnet18", K, pretrained=tmp_path / "missing.pth")


def test_the_distiller_trains_a_classifier_student_with_kd_unchanged():
    student = build_classification_model("mobilenet_v2", K, stem="cifar", width_mult=0.5)
    teacher = build_classification_model("resnet18", K, stem="cifar")
    kd = build_method(MethodSpec(name="kd", temperature=4.0), feature_info(student), feature_info(teacher))
    distiller = Distiller(student, teacher, [(0.9, kd)], ce_weight=1.0, ignore_index=-100).train()
    loss, parts = distiller(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 6]))
    loss.backward()
    assert set(parts) == {"ce", "kd"} and torch.isfinite(loss)
    assert student.features[0][0].weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())


def test_a_neck_runs_on_stage4_and_feeds_the_classifier():
    class Halve(nn.Module):
        out_channels = 256

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(512, 256, 1)

        def forward(self, x):
            return self.conv(x)

    model = build_classification_model("resnet18", K, stem="cifar", neck=Halve()).eval()
    logits, features = model.forward_features(torch.randn(2, 3, 32, 32))
    assert features["neck"].shape[1] == model.feature_channels["neck"] == 256
    assert logits.shape == (2, K) and model.feature_channels["pooled"] == 256
    assert any(p is model.neck.conv.weight for p in model.parameter_groups()[1])
