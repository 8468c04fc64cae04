"""Built-in distillation methods, one module each. Importing this package registers them."""

from pipeline.distill.methods import afd, at, cwd, fitnet, ickd, kd, letkd, none, pkt, rkd, sp  # noqa: F401
