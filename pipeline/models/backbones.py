"""Torchvision backbones cut into four named stages, dilated to a chosen output stride.

Every backbone returns ``{"stage1": stride 4 (low-level), "stage2": stride 8, "stage3": stride
min(16, OS), "stage4": stride OS}`` and keeps torchvision's parameter names, so a torchvision
state dict loads into it key for key (:func:`load_pretrained_backbone`). Weights are never
downloaded: the machines that run this have no network, and silent downloads hide provenance.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Protocol

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck

from pipeline.registry import Registry

STAGES: tuple[str, ...] = ("stage1", "stage2", "stage3", "stage4")


class Backbone(nn.Module):
    """Common surface of the backbones: name, per-stage channels and strides, ignored keys."""

    # Keys of a torchvision checkpoint that the backbone deliberately has no parameter for.
    ignored_pretrained_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, output_stride: int) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        self.name = name
        self.output_stride = output_stride
        self.out_channels: dict[str, int] = {}
        self.strides: dict[str, int] = {
            "stage1": 4,
            "stage2": 8,
            "stage3": min(16, output_stride),
            "stage4": output_stride,
        }

    def forward(self, x: Tensor) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


# ------------------------------------------------------------------------------------ ResNet
def _dilate_basic_layer(layer: nn.Sequential, previous_dilation: int, dilation: int) -> None:
    """Turn a stride-2 BasicBlock layer into a stride-1 dilated one, as torchvision does for Bottleneck.

    torchvision's BasicBlock refuses ``dilation > 1`` in its constructor, so ResNet18/34 cannot use
    ``replace_stride_with_dilation``. The rewrite mirrors ``ResNet._make_layer``: the first block
    drops its stride and keeps the previous dilation, the later blocks use the new dilation.
    """
    for index, block in enumerate(layer):
        assert isinstance(block, BasicBlock)
        d = previous_dilation if index == 0 else dilation
        for conv in (block.conv1, block.conv2):
            conv.stride = (1, 1)
            conv.dilation = (d, d)
            conv.padding = (d, d)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)
        block.stride = 1


class ResNetBackbone(Backbone):
    """torchvision ResNet without avgpool/fc; layer1..layer4 are stage1..stage4."""

    ignored_pretrained_prefixes = ("fc.",)

    def __init__(self, name: str, output_stride: int) -> None:
        super().__init__(name, output_stride)
        # OS16 dilates layer4, OS8 dilates layer3 and layer4.
        dilate = [False, output_stride == 8, True]
        builder = getattr(torchvision.models, name)
        uses_bottleneck = name in ("resnet50", "resnet101")
        if uses_bottleneck:
            net = builder(weights=None, replace_stride_with_dilation=dilate)
        else:
            net = builder(weights=None)
            dilation = 1
            for layer, on in zip((net.layer2, net.layer3, net.layer4), dilate):
                if on:
                    _dilate_basic_layer(layer, dilation, dilation * 2)
                    dilation *= 2
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = Bottleneck.expansion if uses_bottleneck else BasicBlock.expansion
        self.out_channels = {f"stage{i + 1}": c * expansion for i, c in enumerate((64, 128, 256, 512))}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        s1 = self.layer1(x)
        s2 = self.layer2(s1)
        s3 = self.layer3(s2)
        s4 = self.layer4(s3)
        return {"stage1": s1, "stage2": s2, "stage3": s3, "stage4": s4}


# ------------------------------------------------------------------------------- MobileNetV2
class MobileNetV2Backbone(Backbone):
    """torchvision MobileNetV2 ``features[0:18]``, split at its stride changes.

    The final 1x1 conv to 1280 channels (``features.18``) is dropped, as in DeepLab's MobileNetV2
    (TF DeepLab, and the PyTorch ports the TaT numbers come from): ASPP reads the 320-channel map.
    """

    ignored_pretrained_prefixes = ("classifier.", "features.18.")
    # features[a:b] of each stage: strides 4, 8, 16 and 32 (before dilation).
    _bounds: ClassVar[tuple[tuple[int, int], ...]] = ((0, 4), (4, 7), (7, 14), (14, 18))

    def __init__(self, output_stride: int, width_mult: float = 1.0) -> None:
        super().__init__("mobilenet_v2", output_stride)
        net = torchvision.models.mobilenet_v2(weights=None, width_mult=width_mult)
        self.features = nn.Sequential(*list(net.features.children())[:18])
        self._dilate(output_stride)
        self.out_channels = {
            stage: _block_out_channels(self.features[end - 1]) for stage, (_, end) in zip(STAGES, self._bounds)
        }

    def _dilate(self, output_stride: int) -> None:
        """Replace late stride-2 depthwise convs by stride 1 and dilate the later depthwise convs.

        Same rule as torchvision's ResNet: the block that loses its stride keeps the previous
        dilation, the blocks after it use the doubled one; padding = dilation keeps sizes.
        """
        stride, dilation = 2, 1  # features[0] is the stride-2 stem conv
        for block in list(self.features)[1:]:
            depthwise = _depthwise_conv(block)
            if depthwise.stride == (2, 2):
                if stride * 2 > output_stride:
                    depthwise.stride = (1, 1)
                    depthwise.dilation = depthwise.padding = (dilation, dilation)
                    dilation *= 2
                else:
                    stride *= 2
            else:
                depthwise.dilation = depthwise.padding = (dilation, dilation)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for stage, (start, end) in zip(STAGES, self._bounds):
            for index in range(start, end):
                x = self.features[index](x)
            out[stage] = x
        return out


def _depthwise_conv(block: nn.Module) -> nn.Conv2d:
    for module in block.modules():
        if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels:
            return module
    raise TypeError(f"no depthwise conv in {type(block).__name__}")


def _block_out_channels(block: nn.Module) -> int:
    if isinstance(block, InvertedResidual):
        return int(block.out_channels)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    return int(convs[-1].out_channels)


# ------------------------------------------------------------------------------- construction
class BackboneBuilder(Protocol):
    def __call__(self, output_stride: int, width_mult: float) -> Backbone: ...


# Every backbone name the project knows (segmentation and classification models alike).
BACKBONES: Registry[BackboneBuilder] = Registry("backbone")


def _resnet(name: str) -> BackboneBuilder:
    def build(output_stride: int, width_mult: float) -> Backbone:
        if width_mult != 1.0:
            raise ValueError(f"width_mult applies to mobilenet_v2 only, not {name}")
        return ResNetBackbone(name, output_stride)

    return build


for _name in ("resnet18", "resnet34", "resnet50", "resnet101"):
    BACKBONES.register(_name, _resnet(_name))
BACKBONES.register("mobilenet_v2", MobileNetV2Backbone)


def build_backbone(name: str, output_stride: int = 16, width_mult: float = 1.0) -> Backbone:
    """Randomly initialised backbone ``name`` at ``output_stride`` (8 or 16)."""
    return BACKBONES.get(name)(output_stride, width_mult)


def load_pretrained_backbone(backbone: Backbone, path: str | Path) -> list[str]:
    """Load a local torchvision-format state dict into ``backbone``; return the ignored keys.

    Classifier keys (and MobileNetV2's dropped ``features.18``) are ignored. Everything else must
    match exactly, because a half-loaded backbone trains without error and just scores worse.
    """
    path = Path(path)
    name = backbone.name
    expected = f"a torchvision {name} state dict, e.g. torch.save(torchvision.models.{name}().state_dict(), path)"
    if not path.is_file():
        raise FileNotFoundError(f"pretrained backbone weights not found: {path} (expected {expected})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle/zip errors have many types; all mean "not a state dict"
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]  # torch's own text is pages long
        raise ValueError(f"could not read pretrained backbone weights {path}: {reason} (expected {expected})") from error
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors (expected {expected})")

    own = backbone.state_dict()
    ignored = sorted(k for k in state if k.startswith(backbone.ignored_pretrained_prefixes))
    given = {k: v for k, v in state.items() if not k.startswith(backbone.ignored_pretrained_prefixes)}
    matched = [k for k in given if k in own]
    if not matched:
        raise ValueError(
            f"no key of {path} matches the {name} backbone (expected {expected}); "
            f"file keys start {_preview(state)}, backbone keys start {_preview(own)}"
        )
    problems: list[str] = []
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    wrong_shape = [
        f"{k} {tuple(given[k].shape)} vs {tuple(own[k].shape)}" for k in matched if given[k].shape != own[k].shape
    ]
    if missing:
        problems.append(f"missing {len(missing)} keys ({_preview(missing)})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys ({_preview(unexpected)})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatches (file vs model: {_preview(wrong_shape)})")
    if problems:
        raise ValueError(f"{path} does not fit the {name} backbone: {'; '.join(problems)} (expected {expected})")
    backbone.load_state_dict(given, strict=True)
    return ignored


def _preview(keys: Mapping[str, object] | list[str], count: int = 3) -> str:
    items = list(keys)
    more = f", ... {len(items) - count} more" if len(items) > count else ""
    return ", ".join(items[:count]) + more
