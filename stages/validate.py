"""Stage: validate every backend x precision against PyTorch FP32, in two tiers.

Tensors: max abs / rel logit difference on fixed inputs saved beside the results (the first
``validate.parity_images`` val images); for FP32 back ends also at three input sides and two
batch sizes of the one dynamic model. Task: the task's metric (mIoU, or top-1 for classification)
on the val split with a one-sided tolerance per precision (``miou_tolerance`` FP32,
``fp16_miou_tolerance``, ``int8_miou_tolerance``). Backends that cannot run here are recorded as
``skipped`` (reason + install command) or ``export failed``. Runner and comparator are apart, as in
Polygraphy: :func:`run_backend` runs a backend on the inputs, and ``pipeline.measurement.validation.compare``
judges its outputs against the reference's with the tolerance policy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline import metrics_contract as keys
from pipeline.config import PipelineConfig
from pipeline.data import build_dataset, dataset_info
from pipeline.measurement.validation import BackendRun, TolerancePolicy, compare, validation_batches
from pipeline.orchestration.stage import Stage, StageContext, StageResult
from pipeline.runtime import Predictor
from pipeline.runtime.backends import REFERENCE_KEY, backend_plan, file_size, open_backend, with_legacy_aliases
from pipeline.status import Status
from pipeline.tasks import get_task
from stages.deployables import DEPLOY_INPUTS, gpu_provider_settings, run_model_files, student_factory


def parity_inputs(ctx: StageContext) -> np.ndarray:
    dataset = build_dataset(ctx.config.data, "val")
    count = min(ctx.config.validate_.parity_images, len(dataset))
    images, _ = get_task(ctx.config.task).collate([dataset[i] for i in range(count)])
    return images.numpy().astype(np.float32)


def parity_shapes(config: PipelineConfig) -> list[tuple[int, int, int, int]]:
    """(batch, 3, side, side) for every configured side x batch; sides default to s, 1.5 s, 2 s.

    A static export (``export.dynamic: false``) accepts only its own side: the batch is chunked.
    """
    s = config.data.image_size
    if not config.export.dynamic:
        return [(batch, 3, s, s) for batch in config.validate_.parity_batches]
    sides = config.validate_.parity_sizes or (s, (3 * s) // 2, 2 * s)
    return [(batch, 3, side, side) for side in sides for batch in config.validate_.parity_batches]


def shape_inputs(config: PipelineConfig) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """A seeded random input of each parity shape, the same for every backend."""
    rng = np.random.default_rng(0)
    return [(shape, rng.standard_normal(shape).astype(np.float32)) for shape in parity_shapes(config)]


def run_backend(ctx: StageContext, predictor: Predictor, inputs: np.ndarray,
                shapes: list[tuple[tuple[int, int, int, int], np.ndarray]]) -> BackendRun:
    """The runner: ``predictor`` on the parity inputs, on the val split (the task's figures), and on
    each of ``shapes`` (pass none where no comparison needs them)."""
    logits = predictor.predict(inputs)
    info = dataset_info(ctx.config.data)
    batches = validation_batches(ctx.config)
    summary = get_task(ctx.config.task).evaluate_predictions(predictor.predict, batches, info).summary()
    shape_logits = tuple((shape, predictor.predict(x)) for shape, x in shapes)
    return BackendRun(logits, summary, predictor.describe(), shape_logits)


def run(ctx: StageContext) -> StageResult:
    config = ctx.config
    files = run_model_files(ctx)
    task = get_task(config.task)
    metric = task.metric
    policy = TolerancePolicy.from_config(config.validate_)
    inputs = parity_inputs(ctx)
    np.save(ctx.dir / "parity_inputs.npy", inputs)
    shapes = shape_inputs(config)

    plan = backend_plan(student_factory(ctx), **gpu_provider_settings(config))
    opened = open_backend(plan[0], files, ctx.run_dir)
    assert plan[0].key == REFERENCE_KEY and opened.predictor is not None
    reference = run_backend(ctx, opened.predictor, inputs, shapes)
    backends: dict[str, Any] = {REFERENCE_KEY: {
        "status": Status.PASSED, "backend": "pytorch", "precision": "fp32", "size_bytes": file_size(opened.file),
        **reference.summary, f"{metric}_delta": 0.0, "max_abs_diff": 0.0, "runtime": reference.runtime}}

    for spec in plan[1:]:
        opened = open_backend(spec, files, ctx.run_dir)
        if opened.predictor is None:
            backends[spec.key] = {**opened.unavailable_row(), "size_bytes": file_size(opened.file)}
            print(f"[validate] {spec.key}: {opened.status} ({opened.reason})")
            continue
        candidate = run_backend(ctx, opened.predictor, inputs, shapes if policy.checks_shapes(spec.precision) else [])
        entry = {"backend": spec.backend, "precision": spec.precision, "size_bytes": file_size(opened.file),
                 **compare(reference, candidate, spec.precision, policy, metric, task.metric_label)}
        backends[spec.key] = entry
        delta = candidate.summary[metric] - reference.summary[metric]
        print(f"[validate] {spec.key}: max|diff| {entry['max_abs_diff']:.2e}, {task.metric_label} "
              f"{candidate.summary[metric]:.2f} ({delta:+.3f} vs PyTorch) -> {entry['status']}"
              + (f": {entry['reason']}" if "reason" in entry else ""))
    return StageResult(outputs={"parity_inputs": "parity_inputs.npy"},
                       metrics={keys.BACKENDS: with_legacy_aliases(backends)})


STAGE = Stage(
    name="validate",
    run=run,
    inputs=DEPLOY_INPUTS,
    config_keys=("task", "validate", "data", "student.model", "distill.methods", "export.dynamic", "engine"),
    description="parity and task metric (mIoU / top-1) of every backend x precision against PyTorch",
)
