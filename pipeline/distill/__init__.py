"""Distillation: methods behind one interface, a registry, and the Distiller wrapper."""

# The built-in methods register themselves on import: any import of the package knows them all.
from pipeline.distill import methods  # noqa: F401
from pipeline.distill.base import DistillMethod, FeatureInfo, MethodOptions
from pipeline.distill.distiller import Distiller, feature_info
from pipeline.distill.registry import available_methods, build_method, method_class, register
from pipeline.distill.tat import AnchorPointTaTLoss, HierarchicalTaTLoss, PatchGroupTaTLoss, TaTLoss

__all__ = [
    "AnchorPointTaTLoss",
    "HierarchicalTaTLoss",
    "DistillMethod",
    "Distiller",
    "FeatureInfo",
    "MethodOptions",
    "PatchGroupTaTLoss",
    "TaTLoss",
    "available_methods",
    "build_method",
    "feature_info",
    "method_class",
    "register",
]
