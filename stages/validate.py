"""Stage: validate every backend x precision against PyTorch FP32, in two tiers.

Tensors: max abs / rel logit difference on fixed inputs saved beside the results (the first
``validate.parity_images`` val images); for FP32 back ends also at three input sides and two
batch sizes of the one dynamic model. Task: the task's metric (mIoU, or top-1 for classification)
on the val split with a one-sided tolerance per precision (``miou_tolerance`` FP32,
``fp16_miou_tolerance``, ``int8_miou_tolerance``). Backends that cannot run here are recorded as
``skipped`` (reason + install command) or ``export failed``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Subset

from pipeline.backends import REFERENCE_KEY, backend_plan, file_size, open_backend, with_legacy_aliases
from pipeline.config import PipelineConfig
from pipeline.data import build_dataset, dataset_info
from pipeline.runtime import Predictor
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.status import Status
from pipeline.tasks import get_task
from pipeline.validation import tensor_parity, verdict
from stages.deployables import DEPLOY_INPUTS, gpu_provider_settings, run_model_files, student_factory


def val_batches(ctx: StageContext) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    config = ctx.config
    dataset = build_dataset(config.data, "val")
    if config.validate_.max_images:
        dataset = Subset(dataset, range(min(config.validate_.max_images, len(dataset))))
    for images, targets in DataLoader(dataset, batch_size=config.validate_.batch_size, shuffle=False,
                                      collate_fn=get_task(config.task).collate):
        yield images.numpy(), targets.numpy()


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


def shape_parity(reference: Predictor, candidate: Predictor, shapes: list[tuple[int, int, int, int]]) -> list[dict]:
    rng = np.random.default_rng(0)
    results = []
    for shape in shapes:
        x = rng.standard_normal(shape).astype(np.float32)
        parity = tensor_parity(reference.predict(x), candidate.predict(x))
        results.append({"shape": list(shape), "max_abs_diff": parity["max_abs_diff"],
                        "argmax_agreement": parity["argmax_agreement"]})
    return results


def miou_tolerance(config: PipelineConfig, precision: str) -> float:
    v = config.validate_
    return {"fp32": v.miou_tolerance, "tf32": v.tf32_miou_tolerance, "fp16": v.fp16_miou_tolerance,
            "int8": v.int8_miou_tolerance}[precision]


def parity_atol(config: PipelineConfig, precision: str) -> float | None:
    """Logit tolerance at every shape for float32-model rows; None: the task metric alone decides."""
    return {"fp32": config.validate_.atol, "tf32": config.validate_.tf32_atol}.get(precision)


def run(ctx: StageContext) -> StageResult:
    config = ctx.config
    info = dataset_info(config.data)
    files = run_model_files(ctx)
    task = get_task(config.task)
    metric = task.metric
    inputs = parity_inputs(ctx)
    np.save(ctx.dir / "parity_inputs.npy", inputs)

    plan = backend_plan(student_factory(ctx), **gpu_provider_settings(config))
    opened = open_backend(plan[0], files, ctx.run_dir)
    reference = opened.predictor
    assert plan[0].key == REFERENCE_KEY and reference is not None
    reference_logits = reference.predict(inputs)
    reference_summary = task.evaluate_predictions(reference.predict, val_batches(ctx), info).summary()
    backends: dict[str, Any] = {REFERENCE_KEY: {
        "status": Status.PASSED, "backend": "pytorch", "precision": "fp32", "size_bytes": file_size(opened.file),
        **reference_summary, f"{metric}_delta": 0.0, "max_abs_diff": 0.0, "runtime": reference.describe()}}

    for spec in plan[1:]:
        opened = open_backend(spec, files, ctx.run_dir)
        if opened.predictor is None:
            backends[spec.key] = {**opened.unavailable_row(), "size_bytes": file_size(opened.file)}
            print(f"[validate] {spec.key}: {opened.status} ({opened.reason})")
            continue
        predictor = opened.predictor
        parity = tensor_parity(reference_logits, predictor.predict(inputs))
        summary = task.evaluate_predictions(predictor.predict, val_batches(ctx), info).summary()
        delta = summary[metric] - reference_summary[metric]
        entry: dict[str, Any] = {"backend": spec.backend, "precision": spec.precision,
                                 "size_bytes": file_size(opened.file), **summary, f"{metric}_delta": round(delta, 4),
                                 **parity, "runtime": predictor.describe()}
        worst, atol = None, parity_atol(config, spec.precision)
        if atol is not None:
            # The FP32 model must match the reference tensor for tensor, at every shape the dynamic model accepts.
            entry["parity_shapes"] = shape_parity(reference, predictor, parity_shapes(config))
            worst = max([parity["max_abs_diff"], *(p["max_abs_diff"] for p in entry["parity_shapes"])])
            entry["max_abs_diff_all_shapes"] = worst
        entry.update(verdict(spec.precision, task.metric_label, delta, miou_tolerance(config, spec.precision),
                             worst, atol))
        backends[spec.key] = entry
        print(f"[validate] {spec.key}: max|diff| {parity['max_abs_diff']:.2e}, {task.metric_label} {summary[metric]:.2f} "
              f"({delta:+.3f} vs PyTorch) -> {entry['status']}" + (f": {entry['reason']}" if "reason" in entry else ""))
    return StageResult(outputs={"parity_inputs": "parity_inputs.npy"},
                       metrics={"backends": with_legacy_aliases(backends)})


STAGE = Stage(
    name="validate",
    run=run,
    inputs=DEPLOY_INPUTS,
    config_keys=("task", "validate", "data", "student.model", "distill.methods", "export.dynamic", "engine"),
    description="parity and task metric (mIoU / top-1) of every backend x precision against PyTorch",
)
