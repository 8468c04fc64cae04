"""Built-in distillation methods, one module each. Importing this package registers them."""

from pipeline.distill.methods import kd, none  # noqa: F401
