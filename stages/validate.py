"""Stage 6: validate the exported model against PyTorch, in two tiers.

Tensors: max abs / rel logit difference on fixed inputs saved beside the results (the first
``validate.parity_images`` val images). Task: mIoU on the val split, one-sided tolerance.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Subset

from pipeline.builders import build_student, load_weights
from pipeline.data import build_dataset, dataset_info, segmentation_collate
from pipeline.runtime import OnnxRuntimePredictor, Predictor, TorchPredictor
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.validation import evaluate_predictor, tensor_parity
from stages.common import segmentation_summary


def val_batches(ctx: StageContext) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    config = ctx.config
    dataset = build_dataset(config.data, "val")
    if config.validate_.max_images:
        dataset = Subset(dataset, range(min(config.validate_.max_images, len(dataset))))
    for images, targets in DataLoader(dataset, batch_size=config.validate_.batch_size, shuffle=False,
                                         collate_fn=segmentation_collate):
        yield images.numpy(), targets.numpy()


def parity_inputs(ctx: StageContext) -> np.ndarray:
    dataset = build_dataset(ctx.config.data, "val")
    count = min(ctx.config.validate_.parity_images, len(dataset))
    images, _ = segmentation_collate([dataset[i] for i in range(count)])  # real val images differ in size
    return images.numpy().astype(np.float32)


def run(ctx: StageContext) -> StageResult:
    config = ctx.config
    info = dataset_info(config.data)
    student = load_weights(build_student(config), ctx.input_path("strip", "student"))
    reference: Predictor = TorchPredictor(student, device="cpu")
    candidates: dict[str, Predictor] = {"onnxruntime": OnnxRuntimePredictor(ctx.input_path("export_onnx", "onnx"))}

    inputs = parity_inputs(ctx)
    np.save(ctx.dir / "parity_inputs.npy", inputs)
    reference_logits = reference.predict(inputs)

    reference_matrix = evaluate_predictor(reference, val_batches(ctx), info.num_classes, info.ignore_index)
    backends: dict[str, Any] = {
        "pytorch": {"status": "passed", "precision": "fp32", **segmentation_summary(reference_matrix, info.class_names)}
    }
    for name, predictor in candidates.items():
        parity = tensor_parity(reference_logits, predictor.predict(inputs))
        matrix = evaluate_predictor(predictor, val_batches(ctx), info.num_classes, info.ignore_index)
        summary = segmentation_summary(matrix, info.class_names)
        miou_delta = summary["miou"] - backends["pytorch"]["miou"]
        passed = parity["max_abs_diff"] <= config.validate_.atol and -miou_delta <= config.validate_.miou_tolerance
        backends[name] = {
            "status": "passed" if passed else "validation failed",
            "precision": predictor.precision,
            **summary,
            "miou_delta": round(miou_delta, 4),
            **parity,
            "runtime": predictor.describe(),
        }
        print(f"[validate] {name}: max|diff| {parity['max_abs_diff']:.2e}, mIoU {summary['miou']:.2f} "
              f"({miou_delta:+.3f} vs PyTorch) -> {backends[name]['status']}")
    return StageResult(outputs={"parity_inputs": "parity_inputs.npy"}, metrics={"backends": backends})


STAGE = Stage(
    name="validate",
    run=run,
    inputs=("strip", "export_onnx"),
    config_keys=("validate", "data", "student.model", "distill.methods"),
    code=("pipeline.validation", "pipeline.runtime", "pipeline.metrics", "pipeline.data"),
    description="parity and mIoU of ONNX Runtime against PyTorch",
)
