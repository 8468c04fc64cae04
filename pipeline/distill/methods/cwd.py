"""Channel-wise distillation (CWD, Shu et al., ICCV 2021): per channel, a softmax over the spatial
positions turns the map into a distribution; the student matches the teacher's by KL.

L = T^2 / (B * C) * sum_{b,c} KL(softmax(t_bc / T) || softmax(s_bc / T)), softmax over H*W.
On logits by default (classes align; no parameters); on a feature, a training-only 1x1 conv maps
the student to the teacher's width. Zero when the maps coincide; invariant to adding a constant
per (sample, channel) to either map (the spatial softmax removes it).
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from pipeline.distill.pair import FeaturePairMethod, FeaturePairOptions
from pipeline.distill.registry import register


class CWDOptions(FeaturePairOptions):
    feature: str = Field("logits", description="logits (no parameters) or a feature (1x1 adapter)")
    temperature: float = Field(4.0, gt=0, description="the paper's tau for segmentation")


def cwd_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    batch, channels = teacher.shape[:2]
    log_p_s = F.log_softmax(student.flatten(2) / temperature, dim=2)
    log_p_t = F.log_softmax(teacher.flatten(2) / temperature, dim=2)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum()
    return kl * temperature**2 / (batch * channels)


@register
class CWD(FeaturePairMethod):
    name = "cwd"
    Options = CWDOptions
    summary = "channel-wise distillation: KL between per-channel spatial distributions (logits by default)"
    default_weight = 3.0  # the paper's alpha for segmentation

    def __init__(self, options: CWDOptions, student, teacher, artifacts=None) -> None:
        super().__init__(options, student, teacher, artifacts)
        uses_logits = self.student_name == "logits" and self.teacher_name == "logits"
        self.adapter = nn.Identity() if uses_logits else self.conv_adapter()

    def forward(self, student: dict[str, Tensor], teacher: dict[str, Tensor], targets: Tensor) -> Tensor:
        adapted, target = self.adapted_pair(student, teacher)
        return cwd_loss(adapted, target, self.options.temperature)
