"""Built-in distillation methods, one module each. Importing this package registers them."""

from pipeline.distill.methods import (  # noqa: F401
    afd,
    at,
    cwd,
    fitnet,
    ickd,
    kd,
    letkd,
    none,
    pkt,
    rkd,
    sp,
    tat,
    tat_anchor,
    tat_patch,
    tat_seg,
)
