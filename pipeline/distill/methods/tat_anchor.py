"""TaT anchor-point distillation: one-to-all matching on average-pooled anchor maps (global, coarse).

Defaults for the embedded dataset (16x16 decoder feature): anchors (8, 8), i.e. pooling kernel
2. Official settings: 32x32 anchors (kernel 4 on the 129x129 VOC feature) for most settings,
64x64 (kernel 2) for VOC MobileNetV2; the paper's Table 8 (VOC, ResNet18) finds kernel 2 best
(kernel 2/4/8/16 -> 75.37/75.27/74.79/74.56 mIoU).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from torch import nn

from pipeline.distill.base import FeatureInfo
from pipeline.distill.methods.tat import TaTMethodBase, TaTOptions, feature_side, grid_counts
from pipeline.distill.registry import register
from pipeline.distill.tat import AnchorPointTaTLoss


class AnchorPointOptions(TaTOptions):
    anchors: grid_counts("anchors", "(ah, aw)") = Field(  # type: ignore[valid-type]
        (8, 8), description="anchor grid (ah, aw); pooling kernel = (H // ah, W // aw)")
    heads: int = Field(1, ge=1, description="attention heads (the paper uses 1)")


@register
class AnchorPointTaT(TaTMethodBase):
    name = "tat_anchor"
    Options = AnchorPointOptions
    summary = "TaT over average-pooled anchor points (global one-to-all matching at a coarse scale)"

    def build_loss(self, student_channels: int, teacher_channels: int, options: AnchorPointOptions) -> nn.Module:
        if teacher_channels % options.heads:
            raise ValueError(f"heads={options.heads} must divide the teacher's {teacher_channels} channels")
        return AnchorPointTaTLoss(student_channels, teacher_channels, heads=options.heads, anchors=options.anchors,
                                  **options.loss_kwargs())

    @classmethod
    def check_input_size(cls, options: Any, student: FeatureInfo, teacher: FeatureInfo, image_size: int) -> None:
        side = feature_side(student, options.student_feature, image_size)
        ah, aw = options.anchors
        if ah > side or aw > side:
            raise ValueError(
                f"anchors={[ah, aw]} is more anchors than the {side}x{side} '{options.student_feature}' feature has "
                f"positions at data.image_size={image_size}; set anchors to at most {[side, side]} "
                f"(pooling kernel 1) or raise data.image_size"
            )
