"""Probabilistic knowledge transfer (Passalis & Tefas, 2018): match conditional probability
distributions built from cosine similarities between the batch's samples.

x = GAP(f) per sample, L2-normalised; K = (x x^T + 1) / 2; P = K row-normalised;
L = mean(P_t * log((P_t + eps) / (P_s + eps))). Parameter-free, widths may differ. Zero when the
features coincide; invariant to a positive per-sample rescaling of either feature.
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from pipeline.distill.features import check_batch, pooled
from pipeline.distill.pair import FeaturePairMethod, FeaturePairOptions
from pipeline.distill.registry import register


class PKTOptions(FeaturePairOptions):
    feature: str = Field("stage4", description="feature, global-average-pooled to one vector per sample")
    eps: float = Field(1e-7, gt=0, description="added inside the log ratio (the authors' value)")


def conditional_probabilities(vectors: Tensor) -> Tensor:
    unit = F.normalize(vectors, dim=1)
    similarity = (unit @ unit.t() + 1.0) / 2.0
    return similarity / similarity.sum(dim=1, keepdim=True)


def pkt_loss(student: Tensor, teacher: Tensor, eps: float = 1e-7) -> Tensor:
    p_s = conditional_probabilities(pooled(student))
    p_t = conditional_probabilities(pooled(teacher))
    return (p_t * ((p_t + eps) / (p_s + eps)).log()).mean()


@register
class PKT(FeaturePairMethod):
    name = "pkt"
    Options = PKTOptions
    summary = "probabilistic knowledge transfer: KL between cosine-similarity distributions over the batch"
    # CRD's benchmark uses 30000 with batches of 128. The loss is the mean row KL divided by B, so it is 8x
    # larger at batch 16; measured on configs/default.yaml at initialisation the raw loss is ~0.0017:
    # 500 starts the term near 0.85 (~0.4 x CE) where 30000 would be 20 x CE.
    default_weight = 500.0


    def forward(self, student: dict[str, Tensor], teacher: dict[str, Tensor], targets: Tensor) -> Tensor:
        f_s, f_t = self.pair(student, teacher)
        check_batch(f_s, self.name)
        return pkt_loss(f_s, f_t, self.options.eps)
