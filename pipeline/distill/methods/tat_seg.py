"""TaT for segmentation as the official code computes it: patch-group and anchor-point distillation
on one set of gamma/theta/phi projections, L = patch_weight * L_patch + anchor_weight * L_anchor
(docs/METHODS.md section 1: the anchors pool the *already projected* Q, K, V).

The default pipeline's method. ``tat_patch`` and ``tat_anchor`` are the two halves on their own
(each with its own projections) for ablations. Defaults for the embedded dataset (16x16 decoder
feature): patches (4, 4) in 16 groups, anchors (8, 8), weights 1.0 / 0.5 (the official VOC
MobileNetV2 ratio b1 : b2 = 1.0 : 0.5).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from torch import nn

from pipeline.distill.base import FeatureInfo
from pipeline.distill.methods.tat import TaTMethodBase
from pipeline.distill.methods.tat_anchor import AnchorPointOptions, AnchorPointTaT
from pipeline.distill.methods.tat_patch import PatchGroupOptions, PatchGroupTaT
from pipeline.distill.registry import register
from pipeline.distill.tat import HierarchicalTaTLoss


class HierarchicalOptions(PatchGroupOptions, AnchorPointOptions):
    patch_weight: float = Field(1.0, ge=0, description="delta: weight of the patch-group loss")
    anchor_weight: float = Field(0.5, ge=0, description="zeta: weight of the anchor-point loss")


@register
class HierarchicalTaT(TaTMethodBase):
    name = "tat_seg"
    Options = HierarchicalOptions
    summary = "TaT patch-group + anchor-point losses sharing one set of projections (official segmentation loss)"

    def build_loss(self, student_channels: int, teacher_channels: int, options: HierarchicalOptions) -> nn.Module:
        if teacher_channels % options.heads:
            raise ValueError(f"heads={options.heads} must divide the teacher's {teacher_channels} channels")
        return HierarchicalTaTLoss(student_channels, teacher_channels, patches=options.patches, groups=options.groups,
                                   anchors=options.anchors, heads=options.heads, patch_weight=options.patch_weight,
                                   anchor_weight=options.anchor_weight, **options.loss_kwargs())

    @classmethod
    def check_input_size(cls, options: Any, student: FeatureInfo, teacher: FeatureInfo, image_size: int) -> None:
        PatchGroupTaT.check_input_size(options, student, teacher, image_size)
        AnchorPointTaT.check_input_size(options, student, teacher, image_size)
