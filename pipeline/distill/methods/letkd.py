"""LetKD (BMVC 2023): a KD layer inside the student, supervised by the teacher's k-means centres.

The layer (``pipeline/models/kd_layer.py``) is installed after the student's last stage through
:meth:`inference_neck` and stays at inference: strip keeps it, export includes it. Its K scores
per position are supervised by the teacher: with k-means centres c_k of the teacher feature over
the training set (computed once by the ``teacher_centers`` stage),

    p = softmax_k(-||f_t - c_k||^2 / target_temperature),  L = mean over B*H*W of KL(p || softmax(scores)).

Only the teacher feature enters the target, so teacher and student widths may differ; the teacher
feature is resized to the scores' spatial size when the output strides differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from pipeline.distill.base import TEACHER_CENTERS, DistillMethod, MethodOptions, TeacherCentersRequest
from pipeline.distill.features import resize_to
from pipeline.distill.kmeans import squared_distances
from pipeline.distill.registry import register
from pipeline.models.kd_layer import KDLayer

SCORES = "kd_scores"


class LetKDOptions(MethodOptions):
    num_templates: int = Field(128, ge=2, description="K templates / teacher centres (paper: 4096)")
    residual_ratio: float = Field(1.0, ge=0, description="r in out = r * value + x")
    teacher_feature: str = Field("stage4", description="teacher feature clustered into the K centres")
    target_temperature: float = Field(1.0, gt=0, description="divides the squared distances (paper: 1)")
    kmeans_iterations: int = Field(30, ge=1, description="Lloyd iterations (stops earlier once converged)")
    kmeans_max_vectors: int | None = Field(200_000, ge=2, description="subsample of teacher positions; None = all")
    kmeans_seed: int = Field(0, description="seeds the subsample and the k-means++ initialisation")


def letkd_targets(teacher_feature: Tensor, centers: Tensor, temperature: float = 1.0) -> Tensor:
    """log p (B, K, H, W) with p = softmax_k(-||f_t - c_k||^2 / temperature) at every position."""
    batch, channels, height, width = teacher_feature.shape
    vectors = teacher_feature.permute(0, 2, 3, 1).reshape(-1, channels)
    log_p = F.log_softmax(-squared_distances(vectors, centers) / temperature, dim=1)
    return log_p.view(batch, height, width, -1).permute(0, 3, 1, 2)


def letkd_loss(scores: Tensor, target_log_p: Tensor) -> Tensor:
    """KL(p || softmax(scores)) over the K axis, averaged over all B*H*W positions."""
    log_q = F.log_softmax(scores, dim=1)
    return (target_log_p.exp() * (target_log_p - log_q)).sum(dim=1).mean()


@register
class LetKD(DistillMethod):
    name = "letkd"
    Options = LetKDOptions
    summary = "KD layer kept in the student (cosine templates + residual), scores supervised by teacher k-means"
    default_weight = 1.0  # the paper's L = CE + 1.0 * L_letkd; both are KLs/cross-entropies in nats

    def __init__(self, options: LetKDOptions, student, teacher, artifacts=None) -> None:
        super().__init__(options, student, teacher, artifacts)
        if SCORES not in student.channels:
            raise ValueError("method 'letkd' needs its KD layer inside the student; build the student with "
                             "pipeline.builders.build_student (it installs LetKD.inference_neck)")
        if student.channels[SCORES] != options.num_templates:
            raise ValueError(f"the student's KD layer has {student.channels[SCORES]} templates but letkd is "
                             f"configured with num_templates={options.num_templates}")
        channels = teacher.require(options.teacher_feature, self.name, "teacher")
        centers = (artifacts or {}).get(TEACHER_CENTERS)
        if centers is not None and tuple(centers.shape) != (options.num_templates, channels):
            raise ValueError(f"letkd: teacher centres have shape {tuple(centers.shape)}, expected "
                             f"({options.num_templates}, {channels}); re-run the teacher_centers stage")
        # Not persistent: the centres are a pipeline artifact (centers.pt), not trained weights, so a
        # trained Distiller loads (and strips) without them.
        self.register_buffer("centers", None if centers is None else centers.float(), persistent=False)

    @property
    def student_features(self) -> tuple[str, ...]:
        return (SCORES,)

    @property
    def teacher_features(self) -> tuple[str, ...]:
        return (self.options.teacher_feature,)

    @classmethod
    def inference_neck(cls, options: LetKDOptions, channels: int) -> nn.Module:
        return KDLayer(channels, options.num_templates, options.residual_ratio)

    @classmethod
    def teacher_centers_request(cls, options: LetKDOptions) -> TeacherCentersRequest:
        return TeacherCentersRequest(feature=options.teacher_feature, num_centers=options.num_templates,
                                     iterations=options.kmeans_iterations, max_vectors=options.kmeans_max_vectors,
                                     seed=options.kmeans_seed)

    def forward(self, student: dict[str, Tensor], teacher: dict[str, Tensor], targets: Tensor) -> Tensor:
        if self.centers is None:
            raise RuntimeError("letkd has no teacher centres: pass artifacts={'teacher_centers': tensor} "
                               "(the pipeline's teacher_centers stage computes them)")
        scores = student[SCORES]
        feature = resize_to(teacher[self.options.teacher_feature].detach(), scores.shape[-2:])
        with torch.no_grad():
            target = letkd_targets(feature, self.centers, self.options.target_temperature)
        return letkd_loss(scores, target)
