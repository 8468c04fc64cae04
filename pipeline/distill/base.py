"""The interface every distillation method implements.

A method is a training-only ``nn.Module`` that taps named features of the student and the
teacher and returns one scalar loss. It owns its own trainable heads (projections, adapters);
those live in the Distiller, never in the student, so stripping them is just dropping them. The
one exception, a layer the student keeps at inference (LetKD), is declared through
:meth:`DistillMethod.inference_neck` and becomes part of the student's architecture.
"""

from __future__ import annotations

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


class DistillMethod(nn.Module):
    """Subclasses set ``name``, ``Options``, and the features they tap; forward returns the loss."""

    name: ClassVar[str]
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    summary: ClassVar[str] = ""

    def __init__(self, options: MethodOptions, student: FeatureInfo, teacher: FeatureInfo) -> None:
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

    def forward(self, student: dict[str, Tensor], teacher: dict[str, Tensor], targets: Tensor) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        options: dict[str, Any] = self.options.model_dump()
        return ", ".join(f"{k}={v}" for k, v in options.items())
