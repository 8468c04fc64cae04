"""Hinton knowledge distillation on logits, per pixel for segmentation: T^2 * KL(p_t || p_s)."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from pipeline.distill.base import DistillMethod, MethodOptions
from pipeline.distill.registry import register


class KDOptions(MethodOptions):
    temperature: float = Field(4.0, gt=0, description="softens both class distributions; the loss is scaled by T^2")


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Mean over samples (and pixels) of T^2 * KL(softmax(t/T) || softmax(s/T)) over the class axis."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    return kl.mean() * temperature**2


@register
class KnowledgeDistillation(DistillMethod):
    name = "kd"
    Options = KDOptions
    summary = "Hinton KD: temperature-scaled KL between teacher and student class distributions"

    @property
    def student_features(self) -> tuple[str, ...]:
        return ("logits",)

    @property
    def teacher_features(self) -> tuple[str, ...]:
        return ("logits",)

    def forward(self, student: dict[str, Tensor], teacher: dict[str, Tensor], targets: Tensor) -> Tensor:
        return kd_loss(student["logits"], teacher["logits"].detach(), self.options.temperature)
