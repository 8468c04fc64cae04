"""Relational KD (Park et al., 2019): match distances and angles between the batch's samples.

e = GAP(f) per sample. Distance term: smooth-L1 between the pairwise distance matrices, each
divided by its mean non-zero distance. Angle term: smooth-L1 between the cosines of the angles
(e_i - e_j, e_k - e_j) for all triplets. L = distance_weight * L_d + angle_weight * L_a.
Parameter-free, widths may differ. Zero when the features coincide; invariant to a positive
rescaling and to a translation (a constant vector added to every sample) of either feature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from pipeline.distill.features import check_batch, pooled
from pipeline.distill.pair import FeaturePairMethod, FeaturePairOptions
from pipeline.distill.registry import register


class RKDOptions(FeaturePairOptions):
    feature: str = Field("stage4", description="feature, global-average-pooled to one vector per sample")
    distance_weight: float = Field(25.0, ge=0, description="the paper's weight of the distance term")
    angle_weight: float = Field(50.0, ge=0, description="the paper's weight of the angle term")


def pairwise_distances(vectors: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distance matrix with an exactly zero diagonal and finite gradients everywhere."""
    squared = vectors.pow(2).sum(dim=1)
    d2 = (squared[:, None] + squared[None, :] - 2 * vectors @ vectors.t()).clamp(min=eps)
    off_diagonal = 1.0 - torch.eye(len(vectors), device=vectors.device, dtype=vectors.dtype)
    return d2.sqrt() * off_diagonal


def normalised_distances(vectors: Tensor) -> Tensor:
    d = pairwise_distances(vectors)
    return d / d[d > 0].mean().clamp(min=1e-12)


def angle_cosines(vectors: Tensor) -> Tensor:
    """cos of the angle at j between samples i and k, for every (i, j, k): (B, B, B) flattened."""
    differences = F.normalize(vectors.unsqueeze(0) - vectors.unsqueeze(1), dim=2)  # [j, i] = e_i - e_j
    return torch.bmm(differences, differences.transpose(1, 2)).flatten()


def rkd_distance_loss(student: Tensor, teacher: Tensor) -> Tensor:
    return F.smooth_l1_loss(normalised_distances(student), normalised_distances(teacher))


def rkd_angle_loss(student: Tensor, teacher: Tensor) -> Tensor:
    return F.smooth_l1_loss(angle_cosines(student), angle_cosines(teacher))


@register
class RKD(FeaturePairMethod):
    name = "rkd"
    Options = RKDOptions
    summary = "relational KD: match normalised pairwise distances and triplet angles of pooled features"
    default_weight = 1.0  # the paper's balance lives in distance_weight / angle_weight


    def forward(self, student: dict[str, Tensor], teacher: dict[str, Tensor], targets: Tensor) -> Tensor:
        f_s, f_t = self.pair(student, teacher)
        check_batch(f_s, self.name)
        e_s = pooled(f_s)
        e_t = pooled(f_t)
        loss = e_s.new_zeros(())
        if self.options.distance_weight:
            loss = loss + self.options.distance_weight * rkd_distance_loss(e_s, e_t)
        if self.options.angle_weight:
            loss = loss + self.options.angle_weight * rkd_angle_loss(e_s, e_t)
        return loss
