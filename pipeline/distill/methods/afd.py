"""Show, Attend and Distill (AFD, Ji et al., AAAI 2021): attention-based feature matching.

Every teacher feature t attends over every student feature s; the attention weights decide how
much each (t, s) link counts, so no link is chosen by hand. Following the authors' code:

- query  q_t = BN1d(Linear(C_t -> d)(GAP(f_t)))                         one head per teacher feature
- key    k_s = ReLU(BN1d(Linear(C_s -> d)(GAP(f_s)))), then one shared bilinear projection
         BN1d(Linear(d -> d*T)) reshaped to (B, S, T, d): a separate key of s for each teacher t
- logit[b, t, s] = (<W_t k_s, q_t> + <p_t, p_s>) / sqrt(d), with learnable positional embeddings
  p_t (T x d), p_s (S x d) (xavier-normal); alpha = softmax over s (not detached)
- values v_t = L2-normalised channel mean of f_t^2 (flattened); v_s^(t) = channel mean of f_s^2,
  adaptive-average-pooled to f_t's size, flattened, L2-normalised
- L = sum_t mean_b sum_s alpha[b, t, s] * mean_pos (v_s^(t) - v_t)^2

Everything here (queries, keys, bilinear, embeddings) is training-only. The authors worked on
CIFAR/ImageNet classification with every residual block; here the taps are the segmentation
backbones' stage outputs (configurable).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from pipeline.distill.base import DistillMethod, MethodOptions
from pipeline.distill.registry import register

STAGES = ("stage1", "stage2", "stage3", "stage4")


class AFDOptions(MethodOptions):
    student_features: tuple[str, ...] = Field(STAGES, description="student features every teacher feature attends over")
    teacher_features: tuple[str, ...] = Field(STAGES, description="teacher features (one query each)")
    qk_dim: int = Field(128, ge=1, description="query/key width d (the paper's 128)")

    @field_validator("student_features", "teacher_features")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one feature, e.g. [stage1, stage2, stage3, stage4]")
        return value


def _linear_bn(inputs: int, outputs: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(inputs, outputs), nn.BatchNorm1d(outputs)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


def channel_energy(feature: Tensor) -> Tensor:
    """Channel mean of f^2: (B, C, H, W) -> (B, 1, H, W)."""
    return feature.pow(2).mean(dim=1, keepdim=True)


@register
class AFD(DistillMethod):
    name = "afd"
    Options = AFDOptions
    summary = "attention-based feature distillation: every teacher stage attends over all student stages"
    # The paper's beta = 200 was set for CIFAR's 32x32..8x8 maps. Each term is a mean over positions of
    # squared differences of unit vectors (<= 4 / positions), so its scale depends on the resolution.
    # Measured on configs/default.yaml at initialisation (64 px, stage maps of 256..16 positions) the
    # raw loss is ~0.011: beta = 100 starts the term near 1 (~0.45 x CE, which starts at ~2.3), where
    # 200 would already equal CE before any feature has been learnt.
    default_weight = 100.0

    def __init__(self, options: AFDOptions, student, teacher, artifacts=None) -> None:
        super().__init__(options, student, teacher, artifacts)
        d = options.qk_dim
        s_channels = [student.require(name, self.name, "student") for name in options.student_features]
        t_channels = [teacher.require(name, self.name, "teacher") for name in options.teacher_features]
        self.num_teacher, self.num_student, self.qk_dim = len(t_channels), len(s_channels), d
        self.query = nn.ModuleList(_linear_bn(c, d, relu=False) for c in t_channels)
        self.key = nn.ModuleList(_linear_bn(c, d, relu=True) for c in s_channels)
        self.bilinear = _linear_bn(d, d * self.num_teacher, relu=False)
        self.teacher_position = nn.Parameter(torch.empty(self.num_teacher, d))
        self.student_position = nn.Parameter(torch.empty(self.num_student, d))
        nn.init.xavier_normal_(self.teacher_position)
        nn.init.xavier_normal_(self.student_position)

    @property
    def student_features(self) -> tuple[str, ...]:
        return self.options.student_features

    @property
    def teacher_features(self) -> tuple[str, ...]:
        return self.options.teacher_features

    def attention(self, student: list[Tensor], teacher: list[Tensor]) -> Tensor:
        """alpha (B, T, S): for each teacher feature, a distribution over the student features."""
        batch = student[0].shape[0]
        query = torch.stack([layer(f.mean(dim=(2, 3))) for layer, f in zip(self.query, teacher)], dim=1)  # B,T,d
        key = torch.stack([layer(f.mean(dim=(2, 3))) for layer, f in zip(self.key, student)], dim=1)  # B,S,d
        bilinear_key = self.bilinear(key.reshape(batch * self.num_student, self.qk_dim))
        bilinear_key = bilinear_key.view(batch, self.num_student, self.num_teacher, self.qk_dim)
        position = self.teacher_position @ self.student_position.t()  # T,S
        logits = (torch.einsum("bstd,btd->bts", bilinear_key, query) + position) / math.sqrt(self.qk_dim)
        return F.softmax(logits, dim=2)

    @staticmethod
    def value_distances(student: list[Tensor], teacher_feature: Tensor) -> Tensor:
        """(B, S): mean over the teacher map's positions of (v_s^(t) - v_t)^2, for one teacher feature."""
        size = teacher_feature.shape[-2:]
        v_t = F.normalize(channel_energy(teacher_feature).flatten(1), dim=1)
        v_s = torch.stack([F.normalize(F.adaptive_avg_pool2d(channel_energy(f), size).flatten(1), dim=1)
                           for f in student], dim=1)
        return (v_s - v_t.unsqueeze(1)).pow(2).mean(dim=2)

    def forward(self, student: dict[str, Tensor], teacher: dict[str, Tensor], targets: Tensor) -> Tensor:
        f_s = [student[name] for name in self.options.student_features]
        f_t = [teacher[name].detach() for name in self.options.teacher_features]
        alpha = self.attention(f_s, f_t)
        loss = f_s[0].new_zeros(())
        for t, feature in enumerate(f_t):
            loss = loss + (alpha[:, t] * self.value_distances(f_s, feature)).sum(dim=1).mean()
        return loss
