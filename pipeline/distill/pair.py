"""Methods that compare one student feature with one teacher feature (FitNet, ICKD, CWD, PKT, SP,
RKD): the options that name the two features, the taps, and the optional 1x1 adapter."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field
from torch import Tensor, nn

from pipeline.distill.base import DistillMethod, FeatureInfo, MethodOptions
from pipeline.distill.features import resize_to


class FeaturePairOptions(MethodOptions):
    feature: str = Field("decoder", description="student feature compared with the teacher's")
    teacher_feature: str | None = Field(None, description="teacher feature; None = the same name as feature")


class FeaturePairMethod(DistillMethod):
    """Taps ``options.feature`` of the student and ``options.teacher_feature`` (default: the same
    name) of the teacher. Subclasses that compare across widths set ``self.adapter`` (training-only)
    and read :meth:`adapted_pair`; the others read :meth:`pair`."""

    def __init__(self, options: FeaturePairOptions, student: FeatureInfo, teacher: FeatureInfo,
                 artifacts: Mapping[str, Tensor] | None = None) -> None:
        super().__init__(options, student, teacher, artifacts)
        self.student_name = options.feature
        self.teacher_name = options.teacher_feature or options.feature
        self.student_channels = student.require(self.student_name, self.name, "student")
        self.teacher_channels = teacher.require(self.teacher_name, self.name, "teacher")

    def conv_adapter(self) -> nn.Module:
        """A 1x1 conv from the student's width to the teacher's (no bias)."""
        return nn.Conv2d(self.student_channels, self.teacher_channels, kernel_size=1, bias=False)

    @property
    def student_features(self) -> tuple[str, ...]:
        return (self.student_name,)

    @property
    def teacher_features(self) -> tuple[str, ...]:
        return (self.teacher_name,)

    def pair(self, student: dict[str, Tensor], teacher: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(student feature, teacher feature detached)."""
        return student[self.student_name], teacher[self.teacher_name].detach()

    def adapted_pair(self, student: dict[str, Tensor], teacher: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(adapter(student feature) resized to the teacher's H x W, teacher feature detached)."""
        target = teacher[self.teacher_name].detach()
        return resize_to(self.adapter(student[self.student_name]), target.shape[-2:]), target
