"""Image classifiers on torchvision ResNet and MobileNetV2, with the SegmentationModel protocol.

``forward(x)`` gives logits (B, K); ``forward_features(x)`` gives ``(logits, {"stage1".."stage4",
"neck", "pooled"})``; ``feature_channels``/``feature_strides`` describe those taps and
``parameter_groups()`` splits (backbone, classifier), so the Distiller and every distillation
method work unchanged. ``stage4`` is the last feature map before global pooling (ResNet
``layer4``: 7x7x512 for ResNet18/34 at 224, the map TaT distils on ImageNet); ``pooled`` is the
(B, C) vector the classifier reads (its stride is 0: it has no spatial extent).

Parameter names are torchvision's (``conv1``, ``layer1``.., ``fc``; ``features.N``,
``classifier.1``), so a torchvision checkpoint loads key for key.

``stem="cifar"`` adapts a network to 32x32 inputs the usual way: ResNet's 7x7 stride-2 stem conv
becomes 3x3 stride 1 and its max-pool is dropped; MobileNetV2's stem conv and its first
stride-2 block run at stride 1. The last map is then 4x4 at 32x32 instead of 1x1. These are
torchvision networks adapted to CIFAR, not the CIFAR-specific ResNet20/56/110 or WRN of the
distillation literature.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import Parameter
from torchvision.models.resnet import BasicBlock, Bottleneck

from pipeline.models.backbones import BACKBONES

Stem = Literal["imagenet", "cifar"]


class ClassificationModel(nn.Module):
    """Common part: stages -> (optional neck) -> global average pool -> classifier."""

    # Keys of a torchvision checkpoint that hold the classifier (loaded only when the shapes fit).
    classifier_prefixes: tuple[str, ...] = ()

    def __init__(self, name: str, num_classes: int, stem: Stem, neck: nn.Module | None,
                 neck_channels: int | None) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        self.name = name
        self.num_classes = num_classes
        self.stem = stem
        self.neck = neck if neck is not None else nn.Identity()
        self._neck_channels = neck_channels

    def _describe(self, stage_channels: dict[str, int], stage_strides: dict[str, int], pooled_channels: int) -> None:
        channels = dict(stage_channels)
        channels["neck"] = self._neck_channels if self._neck_channels is not None else channels["stage4"]
        channels["pooled"] = pooled_channels
        strides = dict(stage_strides)
        strides["neck"] = strides["stage4"]
        strides["pooled"] = 0
        self._feature_channels, self._feature_strides = channels, strides

    @property
    def feature_channels(self) -> dict[str, int]:
        return dict(self._feature_channels)

    @property
    def feature_strides(self) -> dict[str, int]:
        return dict(self._feature_strides)

    def stages(self, x: Tensor) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def pool_and_classify(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_features(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        features = self.stages(x)
        features["neck"] = self.neck(features["stage4"])
        logits, features["pooled"] = self.pool_and_classify(features["neck"])
        return logits, features

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]

    def head_modules(self) -> list[nn.Module]:  # pragma: no cover - abstract
        raise NotImplementedError

    def parameter_groups(self) -> tuple[list[Parameter], list[Parameter]]:
        """(backbone params, neck + classifier params): the head may train at a higher learning rate."""
        head = [self.neck, *self.head_modules()]
        head_ids = {id(p) for module in head for p in module.parameters()}
        backbone = [p for p in self.parameters() if id(p) not in head_ids]
        return backbone, [p for module in head for p in module.parameters()]


class ResNetClassifier(ClassificationModel):
    classifier_prefixes = ("fc.",)

    def __init__(self, name: str, num_classes: int, stem: Stem = "imagenet", neck: nn.Module | None = None,
                 neck_channels: int | None = None) -> None:
        super().__init__(name, num_classes, stem, neck, neck_channels)
        net = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        if stem == "cifar":
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.avgpool, self.fc = net.avgpool, net.fc
        expansion = Bottleneck.expansion if name in ("resnet50", "resnet101") else BasicBlock.expansion
        first = 4 if stem == "imagenet" else 1
        self._describe({f"stage{i + 1}": c * expansion for i, c in enumerate((64, 128, 256, 512))},
                       {f"stage{i + 1}": first * 2**i for i in range(4)}, 512 * expansion)
        if neck_channels is not None and neck_channels != 512 * expansion:
            self.fc = nn.Linear(neck_channels, num_classes)
            self._feature_channels["pooled"] = neck_channels

    def stages(self, x: Tensor) -> dict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        s1 = self.layer1(x)
        s2 = self.layer2(s1)
        s3 = self.layer3(s2)
        return {"stage1": s1, "stage2": s2, "stage3": s3, "stage4": self.layer4(s3)}

    def pool_and_classify(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pooled = torch.flatten(self.avgpool(x), 1)
        return self.fc(pooled), pooled

    def head_modules(self) -> list[nn.Module]:
        return [self.fc]


class MobileNetV2Classifier(ClassificationModel):
    """torchvision MobileNetV2; stage4 ends with its 1x1 conv to 1280 channels (``features.18``)."""

    classifier_prefixes = ("classifier.",)
    # features[a:b] of each stage: strides 4, 8, 16 and 32 with the ImageNet stem.
    _bounds = ((0, 4), (4, 7), (7, 14), (14, 19))

    def __init__(self, num_classes: int, stem: Stem = "imagenet", width_mult: float = 1.0,
                 neck: nn.Module | None = None, neck_channels: int | None = None) -> None:
        super().__init__("mobilenet_v2", num_classes, stem, neck, neck_channels)
        net = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width_mult)
        if stem == "cifar":
            # Stem conv and the first stride-2 inverted residual (features[2]) at stride 1.
            net.features[0][0].stride = (1, 1)
            _depthwise(net.features[2]).stride = (1, 1)
        self.features, self.classifier = net.features, net.classifier
        channels = {f"stage{i + 1}": _out_channels(self.features[end - 1]) for i, (_, end) in enumerate(self._bounds)}
        first = 4 if stem == "imagenet" else 1
        self._describe(channels, {f"stage{i + 1}": first * 2**i for i in range(4)}, channels["stage4"])
        if neck_channels is not None and neck_channels != channels["stage4"]:
            self.classifier[-1] = nn.Linear(neck_channels, num_classes)
            self._feature_channels["pooled"] = neck_channels

    def stages(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for index, (start, end) in enumerate(self._bounds):
            for block in range(start, end):
                x = self.features[block](x)
            out[f"stage{index + 1}"] = x
        return out

    def pool_and_classify(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(pooled), pooled

    def head_modules(self) -> list[nn.Module]:
        return [self.classifier]


def _depthwise(block: nn.Module) -> nn.Conv2d:
    for module in block.modules():
        if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels:
            return module
    raise TypeError(f"no depthwise conv in {type(block).__name__}")


def _out_channels(block: nn.Module) -> int:
    return int([m for m in block.modules() if isinstance(m, nn.Conv2d)][-1].out_channels)


def build_classification_model(
    backbone: str,
    num_classes: int,
    *,
    stem: Stem = "imagenet",
    width_mult: float = 1.0,
    pretrained: Path | None = None,
    neck: nn.Module | None = None,
) -> ClassificationModel:
    """Teacher or student classifier; ``pretrained`` (a local torchvision file) is loaded strictly.

    A ``neck`` (a layer a method keeps at inference, LetKD) runs on stage4; one that changes the
    channel count says so with an int attribute ``out_channels``.
    """
    neck_channels = getattr(neck, "out_channels", None) if neck is not None else None
    if neck_channels is not None and not isinstance(neck_channels, int):
        raise TypeError(f"neck.out_channels must be an int, got {neck_channels!r}")
    BACKBONES.get(backbone)  # an unknown name fails here, with the valid ones
    model: ClassificationModel
    if backbone == "mobilenet_v2":
        model = MobileNetV2Classifier(num_classes, stem, width_mult, neck, neck_channels)
    else:
        if width_mult != 1.0:
            raise ValueError(f"width_mult applies to mobilenet_v2 only, not {backbone}")
        model = ResNetClassifier(backbone, num_classes, stem, neck, neck_channels)
    if pretrained is not None:
        load_pretrained_classifier(model, pretrained)
    return model


def load_pretrained_classifier(model: ClassificationModel, path: str | Path) -> list[str]:
    """Load a local torchvision state dict into ``model``; return the file's keys left out.

    Every feature key must fit exactly (a half-loaded network trains without error and just
    scores worse). The classifier is loaded too when its shape fits (same number of classes,
    e.g. an ImageNet teacher); otherwise it keeps its fresh initialisation (fine-tuning, e.g.
    ImageNet weights for CIFAR-100) and its keys are returned.
    """
    path = Path(path)
    expected = (f"a torchvision {model.name} state dict, e.g. "
                f"torch.save(torchvision.models.{model.name}().state_dict(), path)")
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path} (expected {expected})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle/zip errors have many types; all mean "not a state dict"
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"could not read pretrained weights {path}: {reason} (expected {expected})") from error
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors (expected {expected})")

    own = model.state_dict()
    head = {k for k in own if k.startswith(model.classifier_prefixes)}
    head_fits = all(k in state and state[k].shape == own[k].shape for k in head)
    wanted = {k: v for k, v in own.items() if head_fits or k not in head}
    problems = []
    missing = [k for k in wanted if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in wanted.items()
             if k in state and state[k].shape != v.shape]
    unexpected = [k for k in state if k not in own]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatches (file vs model)", wrong)):
        if keys:
            problems.append(f"{label}: {len(keys)} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
    if problems:
        raise ValueError(f"{path} does not fit {model.name} (stem {model.stem}): {'; '.join(problems)} "
                         f"(expected {expected})")
    model.load_state_dict({**own, **{k: state[k] for k in wanted}}, strict=True)
    left_out = sorted(k for k in state if k not in wanted)
    if left_out:
        print(f"pretrained {path}: classifier left at its fresh initialisation (the file's does not fit "
              f"{model.num_classes} classes)")
    return left_out
