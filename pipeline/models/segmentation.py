"""The segmentation network: backbone -> neck -> head, with named feature taps for distillation."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import Parameter

from pipeline.models.backbones import Backbone
from pipeline.models.heads import DeepLabV3Head, DeepLabV3PlusHead


class SegmentationModel(nn.Module):
    """``forward`` gives logits at input size; ``forward_features`` also gives the named features.

    Features: ``stage1..stage4`` (backbone, stage4 before the neck), ``neck`` (after it) and
    ``decoder`` (the head's last 3x3 conv-BN, before ReLU). The neck is ``nn.Identity`` unless a
    method keeps a layer at inference (LetKD); it is part of the exported architecture. A neck that
    defines ``forward_features(x) -> (out, {name: tensor})`` and ``feature_channels`` ({name: C})
    adds those named tensors (at stage4's stride) to the features, e.g. LetKD's ``kd_scores``.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: DeepLabV3Head | DeepLabV3PlusHead,
        num_classes: int,
        neck: nn.Module | None = None,
        neck_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck if neck is not None else nn.Identity()
        self.head = head
        self.num_classes = num_classes
        self.output_stride = backbone.output_stride
        channels = dict(backbone.out_channels)
        channels["neck"] = neck_channels if neck_channels is not None else channels["stage4"]
        channels["decoder"] = head.decoder_channels
        strides = dict(backbone.strides)
        strides["neck"] = strides["stage4"]
        strides["decoder"] = strides[head.decoder_stride_source]
        for name, count in getattr(self.neck, "feature_channels", {}).items():
            if name in channels:
                raise ValueError(f"the neck's feature '{name}' would shadow a model feature; rename it")
            channels[name], strides[name] = count, strides["stage4"]
        self._feature_channels = channels
        self._feature_strides = strides

    @property
    def feature_channels(self) -> dict[str, int]:
        return dict(self._feature_channels)

    @property
    def feature_strides(self) -> dict[str, int]:
        return dict(self._feature_strides)

    def forward_features(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        features = self.backbone(x)
        if hasattr(self.neck, "forward_features"):
            features["neck"], extra = self.neck.forward_features(features["stage4"])
            features.update(extra)
        else:
            features["neck"] = self.neck(features["stage4"])
        logits, features["decoder"] = self.head(features["neck"], features["stage1"])
        # size= from the input's symbolic shape keeps the ONNX graph valid for any H/W.
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits, features

    def forward(self, x: Tensor) -> Tensor:
        # One tensor out: the exporter names it "logits"; unused feature taps are pruned from the graph.
        return self.forward_features(x)[0]

    def parameter_groups(self) -> tuple[list[Parameter], list[Parameter]]:
        """(backbone params, neck + head params): the head trains at a higher learning rate."""
        backbone = list(self.backbone.parameters())
        head = list(self.neck.parameters()) + list(self.head.parameters())
        return backbone, head
