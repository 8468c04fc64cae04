"""Built-in distillation methods, one module each. Importing this package registers them."""

from pipeline.distill.methods import kd, none, tat, tat_anchor, tat_patch  # noqa: F401
