"""No distillation: the student learns from labels alone (the slot's neutral element)."""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.distill.base import DistillMethod
from pipeline.distill.registry import register


@register
class NoDistillation(DistillMethod):
    name = "none"
    summary = "cross-entropy only; equals the baseline student"

    def forward(self, student: dict[str, Tensor], teacher: dict[str, Tensor], targets: Tensor) -> Tensor:
        return torch.zeros((), device=targets.device)
