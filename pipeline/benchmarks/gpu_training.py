"""GPU training figures at the paper's scale, on synthetic data of Pascal VOC shape.

    python -m pipeline.benchmarks.gpu_training --out docs/figures/gpu_training
    python -m pipeline.benchmarks.gpu_training --allow-cpu --size 65 --batch 2 --steps 2 --tat-size 17   # smoke test

Measures, each with warm-up steps excluded:
  * teacher training (DeepLabV3+ ResNet101, cross-entropy): images/s and peak GPU memory;
  * TaT distillation (ResNet101 teacher -> ResNet18 student, patch + anchor TaT at the VOC ResNet18
    settings): images/s and peak GPU memory;
  * the TaT one-to-all attention loss at the decoder feature size (129 x 129 = 16641 positions,
    256 channels): forward + backward time and peak memory, naive (materialised N x N softmax)
    against torch's scaled_dot_product_attention with scale=1.0.
Random 21-class labels stand in for VOC: the speed of a step does not depend on the pixels.
Writes <out>.json and <out>.md; refuses to run on CPU unless --allow-cpu (CPU figures at this
size would take hours and mean nothing for GPUs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ModelConfig, TrainConfig
from pipeline.distill.tat import Attention, attention
from pipeline.models import build_segmentation_model
from pipeline.training import SupervisedObjective, TrainingRuntime, build_optimizer

VOC_CLASSES = 21


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def timed(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> tuple[float, float | None]:
    """Mean seconds per call after ``warmup`` calls, and the peak GPU memory (MiB) over the timed calls."""
    for _ in range(warmup):
        step()
    synchronize(device)
    reset_peak(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - started) / steps, peak_mb(device)


def training_step(task: nn.Module, batch: int, size: int, device: torch.device,
                  runtime: TrainingRuntime) -> Callable[[], None]:
    task.to(device).train()
    if runtime.channels_last:
        task.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(task, TrainConfig())
    scaler = torch.amp.GradScaler(device.type, enabled=runtime.amp == "fp16")
    images = runtime.images(torch.randn(batch, 3, size, size), device)
    targets = torch.randint(0, VOC_CLASSES, (batch, size, size), device=device)

    def step() -> None:
        with runtime.autocast(device):
            loss, _ = task(images, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def deeplab(backbone: str) -> nn.Module:
    return build_segmentation_model(ModelConfig(backbone=backbone, output_stride=16, aspp_rates=(6, 12, 18)),
                                    VOC_CLASSES)


def tat_distiller(teacher: nn.Module, student: nn.Module, image_size: int) -> nn.Module:
    """Teacher + student + TaT patch/anchor heads at the paper's VOC ResNet18 settings (16x16
    patches in 64 groups, 32x32 anchors), capped by the decoder feature's side for tiny inputs."""
    from pipeline.config import MethodSpec
    from pipeline.distill import Distiller, build_method, feature_info
    from pipeline.distill.methods.tat import feature_side

    side = feature_side(feature_info(student), "decoder", image_size)
    patches = min(16, side)
    specs = [MethodSpec(name="tat_patch", weight=0.1, patches=[patches, patches],
                        groups=64 if patches == 16 else patches * patches),
             MethodSpec(name="tat_anchor", weight=0.04, anchors=[min(32, side)] * 2)]
    methods = [(spec.weight, build_method(spec, feature_info(student), feature_info(teacher))) for spec in specs]
    return Distiller(student, teacher, methods, teacher_mode="train")


def tat_loss_step(implementation: Attention, side: int, channels: int, device: torch.device,
                  dtype: torch.dtype) -> Callable[[], None]:
    """One forward + backward of the one-to-all TaT loss MSE(softmax(Q K^T) V, target) at side x side
    positions, with the library's attention ("naive" materialises the N x N matrix, "sdpa" does not)."""
    n = side * side
    generator = torch.Generator().manual_seed(0)
    # Small scale keeps softmax(Q K^T) away from one-hot, like projected features after BN.
    q, k, v = (torch.randn(1, 1, n, channels, generator=generator) * channels**-0.5 for _ in range(3))
    q, k, v = (t.to(device, dtype).requires_grad_(True) for t in (q, k, v))
    target = torch.randn(1, 1, n, channels, generator=generator).to(device, dtype)

    def step() -> None:
        F.mse_loss(attention(q, k, v, implementation), target).backward()

    return step


def measure(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    runtime = TrainingRuntime(amp=args.amp, channels_last=args.channels_last)
    figures: dict[str, Any] = {"settings": {**vars(args), "device": str(device)}, "results": {}}
    torch.backends.cudnn.benchmark = True

    teacher = SupervisedObjective(deeplab("resnet101"))
    seconds, memory = timed(training_step(teacher, args.batch, args.size, device, runtime), device, args.warmup,
                            args.steps)
    figures["results"]["teacher_training"] = {"images_per_second": round(args.batch / seconds, 2),
                                              "seconds_per_step": round(seconds, 4), "peak_gpu_memory_mb": memory}
    del teacher
    try:
        distiller = tat_distiller(deeplab("resnet101"), deeplab("resnet18"), args.size)
    except ValueError as exc:  # the TaT methods are not in this checkout yet
        figures["results"]["tat_distillation"] = {"status": f"skipped: {exc}"}
    else:
        seconds, memory = timed(training_step(distiller, args.batch, args.size, device, runtime), device,
                                args.warmup, args.steps)
        figures["results"]["tat_distillation"] = {"images_per_second": round(args.batch / seconds, 2),
                                                  "seconds_per_step": round(seconds, 4), "peak_gpu_memory_mb": memory}
        del distiller

    dtype = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    for name in ("naive", "sdpa"):
        try:
            seconds, memory = timed(tat_loss_step(name, args.tat_size, 256, device, dtype), device, args.warmup,
                                    args.steps)
            row: dict[str, Any] = {"ms_forward_backward": round(seconds * 1000, 3), "peak_gpu_memory_mb": memory}
        except torch.OutOfMemoryError:
            row = {"status": "out of memory"}
        figures["results"][f"tat_loss_{name}"] = {"positions": args.tat_size**2, **row}
    return figures


def markdown(figures: dict[str, Any]) -> str:
    s = figures["settings"]
    lines = [f"GPU training figures: {s['device_name']}, crop {s['size']}, batch {s['batch']}, amp {s['amp']}, "
             f"channels_last {s['channels_last']}, torch {torch.__version__}", "",
             "| measurement | images/s | ms | peak GPU MiB |", "|---|---|---|---|"]
    for name, row in figures["results"].items():
        ms = row.get("ms_forward_backward", round(row["seconds_per_step"] * 1000, 1) if "seconds_per_step" in row
                     else row.get("status"))
        lines.append(f"| {name} | {row.get('images_per_second', '')} | {ms} | {row.get('peak_gpu_memory_mb', '')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.benchmarks.gpu_training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=513, help="training crop side (paper: 513)")
    parser.add_argument("--batch", type=int, default=16, help="images per step (paper: 16 for ResNet18)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (cudnn autotuning)")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--tat-size", type=int, default=129, help="TaT feature side (129 -> N = 16641)")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/gpu_training"), help="writes OUT.json, OUT.md")
    parser.add_argument("--allow-cpu", action="store_true", help="run on CPU (tiny sizes, to test the command)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("error: no CUDA device is visible; these are GPU figures. Run on a GPU machine, or pass --allow-cpu "
              "with small sizes (e.g. --size 65 --batch 2 --steps 2 --tat-size 17) to test the command.",
              file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = args.out
    args.out = str(out)
    figures = measure(args, device)
    figures["settings"]["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(figures, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(figures))
    print(markdown(figures))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
