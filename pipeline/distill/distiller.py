"""The Distiller owns the student, a frozen teacher and the training-only method heads.

The student never holds distillation modules, so after training the ``student.*`` keys of the
Distiller's state dict are exactly a deployable student (see stages/strip.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.distill.base import DistillMethod, FeatureInfo


def feature_info(model: nn.Module) -> FeatureInfo:
    """Channels/strides of a model's named features, plus "logits"."""
    channels = dict(model.feature_channels)
    strides = dict(model.feature_strides)
    channels["logits"] = model.num_classes
    strides["logits"] = 1
    return FeatureInfo(channels=channels, strides=strides, num_classes=model.num_classes)


class Distiller(nn.Module):
    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        methods: Sequence[tuple[float, DistillMethod]],
        ce_weight: float = 1.0,
        teacher_mode: str = "eval",
        ignore_index: int = 255,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.teacher.requires_grad_(False)
        self.methods = nn.ModuleDict({method.name: method for _, method in methods})
        self.weights = {method.name: float(weight) for weight, method in methods}
        self.ce_weight = ce_weight
        self.teacher_mode = teacher_mode
        self.ignore_index = ignore_index
        self.warmup_steps = warmup_steps
        # Training steps taken; in the state dict so a resumed run continues the warm-up where it stopped.
        self.register_buffer("steps_taken", torch.zeros((), dtype=torch.long))

    @property
    def needs_teacher(self) -> bool:
        """Whether any method reads a teacher feature (each method declares the ones it reads)."""
        return any(method.teacher_features for method in self.methods.values())

    @property
    def deployable(self) -> nn.Module:
        return self.student

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        # Frozen teacher: eval BN statistics unless the official-code quirk is asked for.
        self.teacher.train(mode and self.teacher_mode == "train")
        return self

    def distill_scale(self) -> Tensor | float:
        """Factor on every distillation term: a linear ramp (step + 1) / warmup_steps, then 1.

        Freshly initialised method heads (TaT's projections, FitNet's regressor) send large, noisy
        gradients into the student; the ramp lets the task loss shape the student first.
        """
        if self.warmup_steps == 0:
            return 1.0
        # A tensor, not int(steps_taken): reading the counter back would sync a GPU every step.
        return ((self.steps_taken + 1).float() / self.warmup_steps).clamp(max=1.0)

    def forward(self, images: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and its named parts (each already weighted); in training mode, counts a step."""
        student_logits, student_feats = self.student.forward_features(images)
        student_feats = {**student_feats, "logits": student_logits}
        teacher_feats: dict[str, Tensor] = {}
        if self.needs_teacher:  # a CE-only student (method `none`, a sweep's baseline) skips the teacher's cost
            with torch.no_grad():
                teacher_logits, teacher_feats = self.teacher.forward_features(images)
            teacher_feats = {**teacher_feats, "logits": teacher_logits}
        parts = {"ce": self.ce_weight * F.cross_entropy(student_logits, targets, ignore_index=self.ignore_index)}
        scale = self.distill_scale()
        for name, method in self.methods.items():
            parts[name] = scale * self.weights[name] * method(student_feats, teacher_feats, targets)
        if self.training:
            self.steps_taken += 1
        return sum(parts.values()), parts

    def trainable_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, head + neck + method parameters) for the head learning-rate multiplier."""
        backbone, head = self.student.parameter_groups()
        return backbone, [*head, *self.methods.parameters()]
