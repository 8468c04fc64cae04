"""Specification of pipeline.models: DeepLabV3 / DeepLabV3+ on torchvision backbones.

Small inputs keep the whole file fast on a 2-core CPU; the shapes and rules are the same at 513.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pipeline.config import ModelConfig
from pipeline.deployment.export import export_onnx
from pipeline.models import SegmentationModel, build_segmentation_model, count_parameters, load_pretrained_backbone
from pipeline.models.backbones import build_backbone

BACKBONES = ["resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2"]
ARCHS = ["deeplabv3plus", "deeplabv3"]
NUM_CLASSES = 5
DECODER_CHANNELS = 40  # not the default 256, so a hard-coded width would show

# What the paper's networks expose to distillation (width_mult 1.0).
STAGE_CHANNELS = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
    "mobilenet_v2": (24, 32, 96, 320),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine OpenMP
    spin-waiting made this file several times slower; restored afterwards for other files."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(backbone: str, arch: str, output_stride: int = 16) -> SegmentationModel:
    torch.manual_seed(0)
    cfg = ModelConfig(
        backbone=backbone, arch=arch, output_stride=output_stride, aspp_channels=32, decoder_channels=DECODER_CHANNELS
    )
    return build_segmentation_model(cfg, NUM_CLASSES).eval()


def _randomise_batchnorm(model: nn.Module) -> None:
    """Give BN non-trivial statistics so eval-mode checks exercise them (fresh BN is the identity)."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)


# ------------------------------------------------------------------------------ shapes/strides
# OS16 runs on a non-square input, OS8 on a square one: both sizes covered, each model once.
@pytest.mark.parametrize(("output_stride", "size"), [(16, (96, 80)), (8, (64, 64))])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_logits_match_input_size_and_features_match_declared_channels_and_strides(
    backbone: str, arch: str, output_stride: int, size: tuple[int, int]
) -> None:
    model = _model(backbone, arch, output_stride)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        logits, features = model.forward_features(x)
        assert torch.equal(model(x), logits)

    assert logits.shape == (2, NUM_CLASSES, *size)
    assert set(features) == {"stage1", "stage2", "stage3", "stage4", "neck", "decoder"}
    assert set(model.feature_channels) == set(features) == set(model.feature_strides)

    expected_strides = {
        "stage1": 4,
        "stage2": 8,
        "stage3": min(16, output_stride),
        "stage4": output_stride,
        "neck": output_stride,
        "decoder": 4 if arch == "deeplabv3plus" else output_stride,
    }
    assert model.feature_strides == expected_strides
    expected_channels = dict(zip(("stage1", "stage2", "stage3", "stage4"), STAGE_CHANNELS[backbone]))
    expected_channels.update(neck=expected_channels["stage4"], decoder=DECODER_CHANNELS)
    assert model.feature_channels == expected_channels
    for name, feature in features.items():
        stride = expected_strides[name]
        # Stride-2 convs with "same" padding round up.
        spatial = (math.ceil(size[0] / stride), math.ceil(size[1] / stride))
        assert feature.shape == (2, expected_channels[name], *spatial), name


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2"])
def test_decoder_feature_is_the_pre_relu_bn_output_the_classifier_reads(backbone: str, arch: str) -> None:
    model = _model(backbone, arch)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, features = model.forward_features(x)
        decoder = features["decoder"]
        assert (decoder < 0).any(), "decoder feature must be taken before the ReLU"
        head_logits = model.head.classifier(F.relu(decoder))
    # The final logits are the classifier on ReLU(decoder), upsampled: the tap is the right tensor.
    upsampled = F.interpolate(head_logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsampled, logits)


def test_decoder_feature_is_not_modified_in_place_by_a_later_relu() -> None:
    torch.manual_seed(0)
    model = build_segmentation_model(ModelConfig(backbone="mobilenet_v2", decoder_channels=16), NUM_CLASSES).train()
    _, features = model.forward_features(torch.randn(2, 3, 64, 64))
    # Train-mode BN output has zero mean per channel, so a ReLU'd tensor could not satisfy this.
    assert features["decoder"].min() < 0
    assert features["decoder"].mean(dim=(0, 2, 3)).abs().max() < 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_a_separable_head_uses_depthwise_atrous_convs_and_keeps_the_taps_and_shapes(arch: str) -> None:
    """The DeepLabV3+ paper's option: every 3x3 of ASPP and decoder becomes depthwise (with the ASPP
    dilations) + pointwise, far fewer multiply-adds, same features and outputs."""
    torch.manual_seed(0)
    dense = build_segmentation_model(ModelConfig(backbone="mobilenet_v2", arch=arch, decoder_channels=64,
                                                 aspp_channels=64, aspp_rates=(1, 2, 3)), NUM_CLASSES)
    separable = build_segmentation_model(ModelConfig(backbone="mobilenet_v2", arch=arch, decoder_channels=64,
                                                     aspp_channels=64, aspp_rates=(1, 2, 3), separable=True), NUM_CLASSES)
    head_convs = [m for m in separable.head.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert head_convs and all(conv.groups == conv.in_channels for conv in head_convs)
    assert sorted({conv.dilation[0] for conv in head_convs}) == [1, 2, 3]
    assert count_parameters(separable.head) < count_parameters(dense.head) / 3
    x = torch.randn(2, 3, 64, 64)
    for model in (dense, separable):
        logits, features = model.eval().forward_features(x)
        assert logits.shape == (2, NUM_CLASSES, 64, 64) and features["decoder"].shape[1] == 64
        assert (features["decoder"] < 0).any(), "the tap stays the pre-ReLU BN output"


# ------------------------------------------------------------------------------------ dilation
def _conv3x3_dilations(layer: nn.Sequential) -> list[int]:
    dilations = []
    for block in layer:
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
        dilations.append(convs[0].dilation[0])
        assert all(c.padding == c.dilation for c in convs)
    return dilations


@pytest.mark.parametrize("output_stride", [16, 8])
def test_resnet18_dilates_like_torchvision_replace_stride_with_dilation(output_stride: int) -> None:
    # torchvision's BasicBlock rejects dilation, so ResNet18/34 are dilated by hand; the result must
    # follow the rule torchvision applies to Bottleneck ResNets (first block keeps the old dilation).
    basic = build_backbone("resnet18", output_stride)
    bottleneck = build_backbone("resnet50", output_stride)
    for name in ("layer2", "layer3", "layer4"):
        ours, reference = _conv3x3_dilations(getattr(basic, name)), _conv3x3_dilations(getattr(bottleneck, name))
        assert ours[0] == reference[0] and set(ours[1:]) == set(reference[1:]), name


@pytest.mark.parametrize(
    ("output_stride", "expected"),
    [
        # features index -> (depthwise stride, dilation); the stride-2 blocks are 2, 4, 7, 14.
        (16, {7: (2, 1), 13: (1, 1), 14: (1, 1), 15: (1, 2), 17: (1, 2)}),
        (8, {4: (2, 1), 7: (1, 1), 8: (1, 2), 13: (1, 2), 14: (1, 2), 15: (1, 4), 17: (1, 4)}),
    ],
)
def test_mobilenet_v2_late_depthwise_convs_lose_stride_and_dilate(
    output_stride: int, expected: dict[int, tuple[int, int]]
) -> None:
    backbone = build_backbone("mobilenet_v2", output_stride)
    for index, (stride, dilation) in expected.items():
        depthwise = [m for m in backbone.features[index].modules() if isinstance(m, nn.Conv2d) and m.groups > 1][0]
        assert (depthwise.stride[0], depthwise.dilation[0], depthwise.padding[0]) == (stride, dilation, dilation)


def test_mobilenet_v2_drops_the_final_1280_channel_conv_like_deeplab() -> None:
    backbone = build_backbone("mobilenet_v2", 16)
    assert len(backbone.features) == 18
    assert backbone.out_channels["stage4"] == 320


# ------------------------------------------------------------------------------- width / size
def test_mobilenet_width_mult_changes_channels_and_parameter_count() -> None:
    full = build_segmentation_model(ModelConfig(backbone="mobilenet_v2", width_mult=1.0), NUM_CLASSES)
    half = build_segmentation_model(ModelConfig(backbone="mobilenet_v2", width_mult=0.5), NUM_CLASSES)
    assert count_parameters(half.backbone) < count_parameters(full.backbone)
    assert count_parameters(half) < count_parameters(full)
    assert half.feature_channels["stage4"] == 160
    with torch.no_grad():
        _, features = half.eval().forward_features(torch.randn(1, 3, 64, 64))
    assert {k: v.shape[1] for k, v in features.items()} == half.feature_channels


def test_count_parameters_counts_every_element() -> None:
    model = _model("mobilenet_v2", "deeplabv3plus")
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    assert count_parameters(nn.Linear(3, 2)) == 8


def test_every_parameter_receives_a_gradient() -> None:
    # Catches modules that are built (and saved, and counted) but never used in forward.
    torch.manual_seed(0)
    model = build_segmentation_model(
        ModelConfig(backbone="mobilenet_v2", aspp_channels=16, decoder_channels=16), NUM_CLASSES
    ).train()
    model(torch.randn(2, 3, 64, 64)).square().mean().backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None]
    assert not unused


# ------------------------------------------------------------------------------------- neck
class _ZeroNeck(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0


def test_neck_is_applied_between_stage4_and_the_head() -> None:
    # Train mode (batch-stat BN, no dropout) keeps activations O(1); a freshly initialised network
    # in eval mode shrinks them so much that any change to the logits hides in the tolerance.
    cfg = ModelConfig(backbone="mobilenet_v2", aspp_channels=16, decoder_channels=16, dropout=0.0)
    torch.manual_seed(0)
    plain = build_segmentation_model(cfg, NUM_CLASSES).train()
    zeroed = build_segmentation_model(cfg, NUM_CLASSES, neck=_ZeroNeck()).train()
    zeroed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain_logits, plain_features = plain.forward_features(x)
        zero_logits, zero_features = zeroed.forward_features(x)
    assert torch.equal(plain_features["stage4"], plain_features["neck"])  # Identity by default
    torch.testing.assert_close(zero_features["stage4"], plain_features["stage4"])  # stage4 is before the neck
    assert not zero_features["neck"].any()
    assert (zero_logits - plain_logits).abs().max() > 1e-2
    assert torch.equal(zeroed(x), zero_logits)


def test_a_neck_that_changes_channels_declares_out_channels_and_the_head_follows() -> None:
    neck = nn.Conv2d(320, 64, 1)  # nn.Conv2d already carries an int out_channels
    model = build_segmentation_model(ModelConfig(backbone="mobilenet_v2"), NUM_CLASSES, neck=neck).eval()
    assert model.feature_channels["neck"] == 64 and model.feature_channels["stage4"] == 320
    with torch.no_grad():
        logits, features = model.forward_features(torch.randn(1, 3, 64, 64))
    assert features["neck"].shape[1] == 64 and logits.shape == (1, NUM_CLASSES, 64, 64)


def test_parameter_groups_partition_all_parameters_with_the_neck_in_the_head_group() -> None:
    neck = nn.Conv2d(320, 320, 1)
    model = build_segmentation_model(ModelConfig(backbone="mobilenet_v2"), NUM_CLASSES, neck=neck)
    backbone_params, head_params = model.parameter_groups()
    backbone_ids, head_ids = [id(p) for p in backbone_params], [id(p) for p in head_params]
    assert len(set(backbone_ids)) == len(backbone_ids) and len(set(head_ids)) == len(head_ids)
    assert not set(backbone_ids) & set(head_ids)
    assert set(backbone_ids) | set(head_ids) == {id(p) for p in model.parameters()}
    assert set(backbone_ids) == {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in neck.parameters()} <= set(head_ids)


# ------------------------------------------------------------------------------- pretrained
def test_pretrained_resnet18_weights_load_from_a_local_file(tmp_path: Path) -> None:
    torch.manual_seed(123)
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)

    model = build_segmentation_model(ModelConfig(backbone="resnet18", pretrained=path), NUM_CLASSES)
    loaded = model.backbone.state_dict()
    expected = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_pretrained_mobilenet_v2_ignores_classifier_and_final_conv(tmp_path: Path) -> None:
    path = tmp_path / "mbv2.pth"
    reference = torchvision.models.mobilenet_v2()
    torch.save(reference.state_dict(), path)
    backbone = build_backbone("mobilenet_v2")
    ignored = load_pretrained_backbone(backbone, path)
    assert ignored and all(k.startswith(("classifier.", "features.18.")) for k in ignored)
    assert torch.equal(backbone.features[3].conv[0][0].weight, reference.features[3].conv[0][0].weight)


def test_missing_pretrained_file_raises_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(FileNotFoundError, match="nowhere") as error:
        build_segmentation_model(ModelConfig(backbone="resnet18", pretrained=path), NUM_CLASSES)
    assert str(path) in str(error.value) and "resnet18" in str(error.value)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda: {"encoder.weight": torch.zeros(3)}, id="no-key-matches"),
        pytest.param(lambda: torchvision.models.resnet50().state_dict(), id="other-architecture"),
        pytest.param(
            lambda: {k: v for k, v in torchvision.models.resnet18().state_dict().items() if "layer4" not in k},
            id="keys-missing",
        ),
        pytest.param(lambda: [1, 2, 3], id="not-a-state-dict"),
    ],
)
def test_pretrained_file_that_does_not_fit_raises_naming_the_path(tmp_path: Path, content: Callable[[], object]) -> None:
    path = tmp_path / "weights.pth"
    torch.save(content(), path)
    with pytest.raises(ValueError) as error:
        load_pretrained_backbone(build_backbone("resnet18"), path)
    assert str(path) in str(error.value)


def test_pretrained_file_that_is_not_a_torch_file_raises_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="weights.pth"):
        load_pretrained_backbone(build_backbone("resnet18"), path)


def test_mobilenet_weights_of_another_width_raise(tmp_path: Path) -> None:
    path = tmp_path / "mbv2_w1.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), path)
    with pytest.raises(ValueError, match="shape"):
        load_pretrained_backbone(build_backbone("mobilenet_v2", width_mult=0.5), path)


def test_width_mult_is_rejected_for_resnets() -> None:
    with pytest.raises(ValueError, match="mobilenet_v2"):
        build_backbone("resnet18", width_mult=0.5)


# ------------------------------------------------------------------------------------- ONNX
def test_mobilenet_v2_deeplabv3plus_exports_to_onnx_with_dynamic_batch_and_size(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build_segmentation_model(
        ModelConfig(backbone="mobilenet_v2", arch="deeplabv3plus", aspp_channels=16, decoder_channels=16), NUM_CLASSES
    ).eval()
    _randomise_batchnorm(model)
    # The product's exporter: ReLU6 as a plain clamp and batch norms folded first, which torch.export traces faster.
    path = export_onnx(model, tmp_path / "model.onnx", example_shape=(2, 3, 64, 64), opset=18, dynamic=True,
                       argmax=False, metadata={})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # single file, no .data

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    for shape in [(3, 3, 96, 80), (1, 3, 65, 47)]:  # neither the example's batch nor its size
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = model(x).numpy()
        (actual,) = session.run(None, {"images": x.numpy()})
        assert actual.shape == (shape[0], NUM_CLASSES, *shape[2:])
        np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)
