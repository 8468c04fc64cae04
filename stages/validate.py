"""Stage 6: validate the exported model against PyTorch, in two tiers.

Tensors: max abs / rel logit difference on fixed inputs saved beside the results (the first
``validate.parity_images`` val images). Task: the task's metric (mIoU, or top-1 for
classification) on the val split, one-sided tolerance ``validate.miou_tolerance``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Subset

from pipeline.builders import build_student, load_weights
from pipeline.data import build_dataset, dataset_info
from pipeline.runtime import OnnxRuntimePredictor, Predictor, TorchPredictor
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.tasks import get_task
from pipeline.validation import tensor_parity


def val_batches(ctx: StageContext) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    config = ctx.config
    dataset = build_dataset(config.data, "val")
    if config.validate_.max_images:
        dataset = Subset(dataset, range(min(config.validate_.max_images, len(dataset))))
    for images, targets in DataLoader(dataset, batch_size=config.validate_.batch_size, shuffle=False):
        yield images.numpy(), targets.numpy()


def parity_inputs(ctx: StageContext) -> np.ndarray:
    dataset = build_dataset(ctx.config.data, "val")
    count = min(ctx.config.validate_.parity_images, len(dataset))
    return np.stack([dataset[i][0].numpy() for i in range(count)]).astype(np.float32)


def run(ctx: StageContext) -> StageResult:
    config = ctx.config
    info = dataset_info(config.data)
    task = get_task(config.task)
    metric = task.metric
    student = load_weights(build_student(config), ctx.input_path("strip", "student"))
    reference: Predictor = TorchPredictor(student, device="cpu")
    candidates: dict[str, Predictor] = {"onnxruntime": OnnxRuntimePredictor(ctx.input_path("export_onnx", "onnx"))}

    inputs = parity_inputs(ctx)
    np.save(ctx.dir / "parity_inputs.npy", inputs)
    reference_logits = reference.predict(inputs)

    reference_summary = task.evaluate_predictions(reference.predict, val_batches(ctx), info).summary()
    backends: dict[str, Any] = {"pytorch": {"status": "passed", "precision": "fp32", **reference_summary}}
    for name, predictor in candidates.items():
        parity = tensor_parity(reference_logits, predictor.predict(inputs))
        summary = task.evaluate_predictions(predictor.predict, val_batches(ctx), info).summary()
        delta = summary[metric] - backends["pytorch"][metric]
        passed = parity["max_abs_diff"] <= config.validate_.atol and -delta <= config.validate_.miou_tolerance
        backends[name] = {
            "status": "passed" if passed else "validation failed",
            "precision": predictor.precision,
            **summary,
            f"{metric}_delta": round(delta, 4),
            **parity,
            "runtime": predictor.describe(),
        }
        print(f"[validate] {name}: max|diff| {parity['max_abs_diff']:.2e}, {task.metric_label} {summary[metric]:.2f} "
              f"({delta:+.3f} vs PyTorch) -> {backends[name]['status']}")
    return StageResult(outputs={"parity_inputs": "parity_inputs.npy"}, metrics={"backends": backends})


STAGE = Stage(
    name="validate",
    run=run,
    inputs=("strip", "export_onnx"),
    config_keys=("task", "validate", "data", "student.model", "distill.methods"),
    code=("pipeline.validation", "pipeline.runtime", "pipeline.metrics", "pipeline.data", "pipeline.tasks"),
    description="parity and task metric (mIoU / top-1) of ONNX Runtime against PyTorch",
)
