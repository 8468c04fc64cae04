"""Name -> method class. Methods register themselves on import (``@register``); configs refer to them
by name."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import ValidationError
from torch import Tensor

from pipeline.distill.base import DistillMethod, FeatureInfo, MethodOptions
from pipeline.registry import Registry

if TYPE_CHECKING:
    from pipeline.config import MethodSpec

# Filled by the built-in methods' @register when pipeline.distill (the package) is imported.
METHODS: Registry[type[DistillMethod]] = Registry("distillation method")


def register(cls: type[DistillMethod]) -> type[DistillMethod]:
    return METHODS.register(cls.name, cls)


def available_methods() -> dict[str, type[DistillMethod]]:
    return dict(METHODS.items())


def method_class(name: str) -> type[DistillMethod]:
    return METHODS.get(name)


def parse_options(spec: "MethodSpec") -> MethodOptions:
    return method_class(spec.name).Options.model_validate(spec.options)


def validate_method_spec(spec: "MethodSpec", where: str) -> None:
    """Raise ValueError naming the bad key (with a suggestion) if the spec cannot be built."""
    try:
        cls = method_class(spec.name)
    except ValueError as exc:
        raise ValueError(f"{where}.name: {exc}") from None
    try:
        cls.Options.model_validate(spec.options)
    except ValidationError as exc:
        problems = []
        valid = list(cls.Options.model_fields)
        for error in exc.errors():
            key = ".".join(str(p) for p in error["loc"])
            if error["type"] == "extra_forbidden":
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                problems.append(f"{where}.{key}: unknown option of '{spec.name}'; {hint}options: {', '.join(valid) or 'none'}")
            else:
                problems.append(f"{where}.{key}: {error['msg']}")
        raise ValueError("; ".join(problems)) from None


def build_method(
    spec: "MethodSpec",
    student: FeatureInfo,
    teacher: FeatureInfo,
    artifacts: Mapping[str, Tensor] | None = None,
) -> DistillMethod:
    cls = method_class(spec.name)
    return cls(parse_options(spec), student, teacher, artifacts=artifacts)


def method_weight(spec: "MethodSpec") -> float:
    """The spec's weight, or the method's own default when the config gives none."""
    return float(spec.weight) if spec.weight is not None else float(method_class(spec.name).default_weight)

