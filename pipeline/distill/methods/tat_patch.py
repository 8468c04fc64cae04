"""TaT patch-group distillation: one-to-all matching inside n x m patches, grouped g ways.

Defaults for the embedded dataset (64x64 images -> 16x16 decoder feature): patches (4, 4), so
each patch is 4x4 positions, and groups 16, one patch per group. That is the official
MobileNetV2 setting on Pascal VOC (129x129 feature: n = m = 32 -> 4x4 patches, g = 1024 = n*m)
scaled to our feature: the attention window keeps its 16 positions. The official ResNet18 VOC
setting is n = m = 16 (8x8 patches), g = 64 (4 patches per group); COCO-Stuff10k: ResNet18
n = 32, g = 512, MobileNetV2 n = 16, g = 64.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationInfo, field_validator
from torch import nn

from pipeline.distill.base import FeatureInfo
from pipeline.distill.methods.tat import TaTMethodBase, TaTOptions, feature_side, grid_counts
from pipeline.distill.registry import register
from pipeline.distill.tat import PatchGroupTaTLoss, divisors


class PatchGroupOptions(TaTOptions):
    patches: grid_counts("patches", "(n, m)") = Field(  # type: ignore[valid-type]
        (4, 4), description="number of patches (n, m) along H and W; leftovers dropped")
    groups: int = Field(16, ge=1, description="channel groups g over the n*m stacked patches; must divide n*m")

    @field_validator("groups")
    @classmethod
    def _divides(cls, groups: int, info: ValidationInfo) -> int:
        patches = info.data.get("patches")
        if patches is not None and (patches[0] * patches[1]) % groups:
            count = patches[0] * patches[1]
            raise ValueError(f"groups={groups} must divide the number of patches n*m = {count}; "
                             f"choose one of {divisors(count)} or change patches")
        return groups


@register
class PatchGroupTaT(TaTMethodBase):
    name = "tat_patch"
    Options = PatchGroupOptions
    summary = "TaT inside n x m patches stacked channel-wise in g groups (local features + spatial pattern)"

    def build_loss(self, student_channels: int, teacher_channels: int, options: PatchGroupOptions) -> nn.Module:
        return PatchGroupTaTLoss(student_channels, teacher_channels, patches=options.patches, groups=options.groups,
                                 **options.loss_kwargs())

    @classmethod
    def check_input_size(cls, options: Any, student: FeatureInfo, teacher: FeatureInfo, image_size: int) -> None:
        side = feature_side(student, options.student_feature, image_size)
        n, m = options.patches
        if n > side or m > side:
            raise ValueError(
                f"patches={[n, m]} is more patches than the {side}x{side} '{options.student_feature}' feature has "
                f"positions at data.image_size={image_size}; set patches to at most {[side, side]} "
                f"(or raise data.image_size)"
            )
