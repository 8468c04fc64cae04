"""The interface every distillation method implements.

A method is a training-only ``nn.Module`` that taps named features of the student and the
teacher and returns one scalar loss. It owns its own trainable heads (projections, adapters,
attention meta-networks); those live in the Distiller, never in the student, so stripping them is
just dropping them. Two hooks cover what a loss alone cannot:

- :meth:`DistillMethod.inference_neck`: a layer the student keeps at inference (LetKD's KD layer).
  It becomes part of the student's architecture (built by ``pipeline.builders.build_student``),
  so strip keeps it and export includes it. A neck may expose internal tensors as extra student
  features (see ``pipeline.models.segmentation``), which is how the method reads them.
- :meth:`DistillMethod.teacher_centers_request`: a precomputed artifact (k-means centres of a
  teacher feature over the training set), computed once by the ``teacher_centers`` stage and
  handed to the method's constructor as ``artifacts["teacher_centers"]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn


class MethodOptions(BaseModel):
    """Base for a method's own options (``distill.methods[i]`` keys besides name and weight)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class FeatureInfo:
    """Shape facts about one network's named features: what a method needs to build its heads."""

    channels: dict[str, int]
    strides: dict[str, int]
    num_classes: int

    def require(self, name: str, who: str, role: str) -> int:
        if name not in self.channels:
            raise ValueError(
                f"method '{who}' taps {role} feature '{name}', which this model does not have; "
                f"available: {', '.join(sorted(self.channels))}"
            )
        return self.channels[name]


@dataclass(frozen=True)
class TeacherCentersRequest:
    """What the ``teacher_centers`` stage computes for a method: k-means over one teacher feature.

    Every spatial position of every training image is one vector of ``feature``'s channels;
    ``max_vectors`` caps how many (a seeded uniform subsample) so large datasets stay cheap.
    """

    feature: str
    num_centers: int
    iterations: int = 30
    max_vectors: int | None = None
    seed: int = 0


TEACHER_CENTERS = "teacher_centers"


class DistillMethod(nn.Module):
    """Subclasses set ``name``, ``Options``, ``summary``, the features they tap, and forward."""

    name: ClassVar[str]
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    summary: ClassVar[str] = ""
    # The weight used when a config's method entry gives none: the paper's setting, rescaled where
    # the paper's loss scale does not carry over to segmentation features (see each module).
    default_weight: ClassVar[float] = 1.0

    def __init__(
        self,
        options: MethodOptions,
        student: FeatureInfo,
        teacher: FeatureInfo,
        artifacts: Mapping[str, Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.options = options

    @property
    def student_features(self) -> tuple[str, ...]:
        """Names of student features read in forward ("logits" is always available)."""
        return ()

    @property
    def teacher_features(self) -> tuple[str, ...]:
        return ()

    @classmethod
    def inference_neck(cls, options: MethodOptions, channels: int) -> nn.Module | None:
        """A module the student keeps at inference after its last backbone stage (LetKD only)."""
        return None

    @classmethod
    def check_input_size(cls, options: MethodOptions, student: FeatureInfo, teacher: FeatureInfo, image_size: int) -> None:
        """Raise ValueError when these options cannot work on the features of a square
        ``image_size`` input (checked before any training); the message says which option to change."""

    @classmethod
    def teacher_centers_request(cls, options: MethodOptions) -> TeacherCentersRequest | None:
        """Ask the pipeline for k-means centres of a teacher feature (LetKD only)."""
        return None

    def forward(self, student: dict[str, Tensor], teacher: dict[str, Tensor], targets: Tensor) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        options: dict[str, Any] = self.options.model_dump()
        return ", ".join(f"{k}={v}" for k, v in options.items())
