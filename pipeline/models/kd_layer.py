"""LetKD's knowledge-distillation layer: a part of the student that stays at inference.

"Knowledge Distillation Layer that Lets the Student Decide" (BMVC 2023). After the student's last
stage, the layer scores every position against K learned templates and mixes a correction back:

    scores = s1 * conv1x1(x / ||x||, W1 / ||W1||)                 (C -> K, cosine, s1 init 3.0)
    value  = s2 * conv1x1(h / ||h||, W2 / ||W2||), h = ReLU(BN(scores))   (K -> C, s2 init 1.0)
    out    = r * value + x                                       (residual ratio r)

Norms are over channels (inputs) and over input channels (weights); no biases. During training the
scores are supervised by the teacher (``pipeline/distill/methods/letkd.py``); they are exposed as
the student feature ``kd_scores`` through ``forward_features``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CosineConv1x1(nn.Module):
    """1x1 convolution of L2-normalised inputs with L2-normalised weights, times a learnable scale."""

    def __init__(self, in_channels: int, out_channels: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        weight = F.normalize(self.weight, dim=1)[:, :, None, None]
        return self.scale * F.conv2d(F.normalize(x, dim=1), weight)


class KDLayer(nn.Module):
    """The KD layer; keeps the channel count, so it drops in as the student's neck."""

    def __init__(self, channels: int, templates: int, residual_ratio: float = 1.0,
                 score_scale: float = 3.0, value_scale: float = 1.0) -> None:
        super().__init__()
        if channels < 1 or templates < 1:
            raise ValueError(f"KDLayer needs channels >= 1 and templates >= 1, got {channels}, {templates}")
        self.scores = CosineConv1x1(channels, templates, score_scale)
        self.norm = nn.BatchNorm2d(templates)
        self.value = CosineConv1x1(templates, channels, value_scale)
        self.residual_ratio = float(residual_ratio)
        # Extra named features SegmentationModel exposes: the K-space scores the teacher supervises.
        self.feature_channels = {"kd_scores": templates}

    def forward_features(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        scores = self.scores(x)
        value = self.value(F.relu(self.norm(scores)))
        return x + self.residual_ratio * value, {"kd_scores": scores}

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]

    def extra_repr(self) -> str:
        return f"templates={self.norm.num_features}, residual_ratio={self.residual_ratio}"
