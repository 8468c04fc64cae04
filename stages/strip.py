"""Stage 4: strip the training-only parts, leaving exactly the deployable student, and prove it.

Proof (recorded in strip/proof.json): the ``student.*`` keys load strictly into a freshly built
student, the parameter count equals that fresh student's, and outputs on fixed inputs are
bit-identical to the student inside the trained Distiller.
"""

from __future__ import annotations

from typing import Any

import torch

from pipeline import metrics_contract as keys
from pipeline.artifacts import atomic_torch_save, atomic_write_json
from pipeline.builders import build_distiller, build_student, build_teacher
from pipeline.model_files import ModelFile
from pipeline.models import count_parameters
from pipeline.orchestration.stage import Stage, StageContext, StageResult

PREFIX = "student."


def strip_state_dict(distiller_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The student's own weights: every ``student.`` key, prefix removed; nothing else."""
    return {key[len(PREFIX):]: value for key, value in distiller_state.items() if key.startswith(PREFIX)}


def proof_inputs(image_size: int, count: int = 4, seed: int = 1234) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, image_size, image_size, generator=generator)


def run(ctx: StageContext) -> StageResult:
    config = ctx.config
    distiller_state = torch.load(ctx.input_path("distill_student", "weights"), map_location="cpu", weights_only=True)
    distiller = build_distiller(config, build_teacher(config), build_student(config))
    distiller.load_state_dict(distiller_state, strict=True)

    stripped = build_student(config)
    fresh_params = count_parameters(stripped)
    stripped.load_state_dict(strip_state_dict(distiller_state), strict=True)

    inputs = proof_inputs(config.data.image_size)
    with torch.no_grad():
        reference = distiller.student.eval()(inputs)
        candidate = stripped.eval()(inputs)
    max_abs_diff = float((reference - candidate).abs().max())
    removed = sorted({key.split(".")[0] + "." + key.split(".")[1] for key in distiller_state
                      if not key.startswith(PREFIX) and "." in key})
    proof: dict[str, Any] = {
        "strict_load": True,
        "student_params": count_parameters(stripped),
        "fresh_student_params": fresh_params,
        "params_equal": count_parameters(stripped) == fresh_params,
        "distiller_params": count_parameters(distiller),
        "removed_params": count_parameters(distiller) - count_parameters(stripped),
        "removed_modules": removed,
        "max_abs_diff": max_abs_diff,
        "outputs_identical": max_abs_diff == 0.0,
    }
    if not (proof["params_equal"] and proof["outputs_identical"]):
        raise RuntimeError(f"strip could not prove the stripped student equals the trained one: {proof}")
    atomic_torch_save(stripped.state_dict(), ctx.dir / "student.pt")
    atomic_write_json(ctx.dir / "proof.json", proof)
    return StageResult(outputs={"student": "student.pt", "proof": "proof.json"},
                       metrics={keys.STRIP: proof, keys.STUDENT: {"params": proof["student_params"]}},
                       model_files=(ModelFile("torch", f"{ctx.stage.name}/student.pt", "pytorch", "fp32",
                                              metadata={"params": proof["student_params"]}),))


STAGE = Stage(
    name="strip",
    run=run,
    inputs=("distill_student",),
    config_keys=("teacher.model", "student.model", "distill", "data.image_size", "data.dataset"),
    description="remove teacher and distillation heads; prove the student is intact",
)
