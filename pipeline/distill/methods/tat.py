"""TaT, one-to-all (global) matching of a student feature against the teacher's.

The options shared by ``tat``, ``tat_patch`` and ``tat_anchor`` live here; the losses themselves
are in pipeline/distill/tat.py. Each method owns its own gamma/theta/phi projections (training
only; stripped with the Distiller).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BeforeValidator, Field
from torch import Tensor, nn

from pipeline.distill.base import DistillMethod, FeatureInfo, MethodOptions
from pipeline.distill.registry import register
from pipeline.distill.tat import TaTLoss


class TaTOptions(MethodOptions):
    student_feature: str = Field("decoder", description="student feature tapped (DeepLabV3+ decoder, pre-ReLU)")
    teacher_feature: str = Field("decoder", description="teacher feature tapped; same stride as the student's")
    parametric: bool = Field(True, description="gamma/theta/phi as 1x1 conv + BN; False = identities")
    align: bool = Field(True, description="non-parametric only: 1x1 conv + BN on the student when widths differ")
    query: Literal["student", "teacher"] = Field("student", description="'student' = official code, 'teacher' = paper's index form")
    kernel_size: Literal[1, 3] = Field(1, description="gamma/phi kernel; 3 = the ImageNet variant")
    project_teacher: bool = Field(True, description="theta as 1x1 conv + BN; False = identity (ImageNet variant)")
    per_image: bool = Field(False, description="loss one image at a time, then the mean (official segmentation code)")
    implementation: Literal["sdpa", "naive"] = Field("sdpa", description="fused attention or the materialised reference")

    def loss_kwargs(self) -> dict[str, Any]:
        return {"parametric": self.parametric, "query": self.query, "kernel_size": self.kernel_size,
                "project_teacher": self.project_teacher, "align": self.align, "per_image": self.per_image,
                "implementation": self.implementation}


def positive_pair(value: Any) -> Any:
    """``4`` -> ``(4, 4)``: a square grid may be written as one number."""
    return (value, value) if isinstance(value, int) else value


def grid_counts(what: str, axes: str) -> Any:
    """The type of a grid option such as ``patches`` or ``anchors``: counts (rows, columns) >= 1,
    one number meaning a square grid."""
    def at_least_one(value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 1:
            raise ValueError(f"{what} are counts {axes} >= 1, got {list(value)}")
        return value

    return Annotated[tuple[int, int], BeforeValidator(positive_pair), AfterValidator(at_least_one)]


def feature_side(info: FeatureInfo, name: str, image_size: int) -> int:
    """Side of a feature map for a square input (convolutions with padding round up)."""
    return math.ceil(image_size / info.strides[name])


class TaTMethodBase(DistillMethod):
    """Taps one student and one teacher feature of equal stride and applies a TaT loss to them."""

    Options: ClassVar[type[TaTOptions]] = TaTOptions

    def __init__(self, options: TaTOptions, student: FeatureInfo, teacher: FeatureInfo,
                 artifacts: Mapping[str, Tensor] | None = None) -> None:
        super().__init__(options, student, teacher, artifacts)
        student_channels = student.require(options.student_feature, self.name, "student")
        teacher_channels = teacher.require(options.teacher_feature, self.name, "teacher")
        student_stride = student.strides[options.student_feature]
        teacher_stride = teacher.strides[options.teacher_feature]
        if student_stride != teacher_stride:
            raise ValueError(
                f"student feature '{options.student_feature}' has stride {student_stride} and teacher feature "
                f"'{options.teacher_feature}' stride {teacher_stride}; TaT matches positions one to one, so set "
                f"student_feature/teacher_feature to features of equal stride"
            )
        self.loss = self.build_loss(student_channels, teacher_channels, options)

    def build_loss(self, student_channels: int, teacher_channels: int, options: TaTOptions) -> nn.Module:
        raise NotImplementedError

    @property
    def student_features(self) -> tuple[str, ...]:
        return (self.options.student_feature,)

    @property
    def teacher_features(self) -> tuple[str, ...]:
        return (self.options.teacher_feature,)

    def forward(self, student: dict[str, Tensor], teacher: dict[str, Tensor], targets: Tensor) -> Tensor:
        return self.loss(student[self.options.student_feature], teacher[self.options.teacher_feature])


class GlobalTaTOptions(TaTOptions):
    heads: int = Field(1, ge=1, description="attention heads; must divide the teacher's channels")


@register
class TargetAwareTransformer(TaTMethodBase):
    name = "tat"
    Options = GlobalTaTOptions
    summary = "TaT one-to-all: student positions rebuilt by attention over the teacher, MSE to the teacher feature"

    def build_loss(self, student_channels: int, teacher_channels: int, options: GlobalTaTOptions) -> nn.Module:
        if teacher_channels % options.heads:
            raise ValueError(f"heads={options.heads} must divide the teacher's {teacher_channels} channels")
        return TaTLoss(student_channels, teacher_channels, heads=options.heads, **options.loss_kwargs())


__all__ = ["GlobalTaTOptions", "TaTMethodBase", "TaTOptions", "TargetAwareTransformer", "feature_side", "grid_counts", "positive_pair"]
