"""TaT cost: loss forward+backward time and peak memory (SDPA vs the materialised N x N attention),
and the distillation step overhead at a pipeline config's settings.

    python -m pipeline.benchmarks.tat --out exported/benchmarks/tat [--device cuda] [--threads 2]

Writes ``tat.json`` and ``tat.md`` into ``--out``.

What is measured:
- time: median wall time of one forward + backward of a parametric one-to-all ``TaTLoss`` on
  (batch, channels, H, W) random features with H*W = N, after warm-up (CUDA synchronised).
- peak memory, CUDA: ``torch.cuda.max_memory_allocated`` during one forward + backward minus the
  memory allocated just before it (inputs and weights excluded): the allocator's true peak.
- peak memory, CPU: a fresh process builds the inputs, then runs one forward + backward; the figure
  is its peak resident set size (``ru_maxrss``) minus its resident size just before that step. It
  counts what the process really touched (allocator slack included), to within a few MB.
- overhead: time of one distillation step (student + teacher forward, all losses, backward,
  optimizer step) / (teacher forward + one plain cross-entropy student step), same batch, random
  weights and inputs at the config's batch and image size.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from pipeline.benchmarks.common import machine, median_ms, synchronize, train_step, write_results
from pipeline.distill.tat import TaTLoss
from pipeline.reporting.tables import markdown_table

DEFAULT_POSITIONS = (1024, 4096, 16384)


# ------------------------------------------------------------------------------ helpers
def grid_for(positions: int) -> tuple[int, int]:
    """(H, W) with H * W = positions and H the largest divisor <= sqrt(positions)."""
    height = max(d for d in range(1, math.isqrt(positions) + 1) if positions % d == 0)
    return height, positions // height


def loss_setup(positions: int, channels: int, batch: int, heads: int, implementation: str, device: torch.device):
    height, width = grid_for(positions)
    torch.manual_seed(0)
    module = TaTLoss(channels, channels, heads=heads, implementation=implementation).to(device)
    f_s = torch.randn(batch, channels, height, width, device=device, requires_grad=True)
    f_t = torch.randn(batch, channels, height, width, device=device)

    def step() -> None:
        module.zero_grad(set_to_none=True)
        f_s.grad = None
        module(f_s, f_t).backward()

    return step


def naive_bytes(positions: int, batch: int, heads: int) -> int:
    """Rough size of what the materialised attention keeps alive: logits, weights and their grads."""
    return 4 * batch * heads * positions * positions * 4


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM; Linux >= 4.0). False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def cpu_peak_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: RSS high-water mark of one forward + backward above the RSS before it."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    step = loss_setup(spec["positions"], spec["channels"], spec["batch"], spec["heads"], spec["implementation"],
                      torch.device("cpu"))
    reset = reset_peak_rss()
    baseline = current_rss_bytes()
    high_water_before = peak_rss_bytes()
    step()
    high_water_after = peak_rss_bytes()
    return {
        "peak_mb": round((high_water_after - baseline) / 2**20, 1),
        "baseline_rss_mb": round(baseline / 2**20, 1),
        # Without a reset the step may never rise above an earlier transient: then this is an upper bound.
        "upper_bound": not reset and high_water_after == high_water_before,
    }


def peak_memory_mb(spec: dict[str, Any], device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        step = loss_setup(spec["positions"], spec["channels"], spec["batch"], spec["heads"], spec["implementation"],
                          device)
        step()  # warm the kernels' workspaces so the figure is the steady-state step
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        synchronize(device)
        return {"peak_mb": round((torch.cuda.max_memory_allocated(device) - before) / 2**20, 1),
                "method": "torch.cuda.max_memory_allocated above the allocation before the step"}
    out = subprocess.run([sys.executable, "-m", "pipeline.benchmarks.tat", "--peak-rss-child", json.dumps(spec)],
                         capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parents[2])
    if out.returncode != 0:
        return {"peak_mb": None, "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["method"] = "peak RSS of a fresh process above its RSS before the step"
    return result


# ----------------------------------------------------------------------------- sections
def attention_benchmark(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    rows = []
    for positions in args.positions:
        for implementation in args.implementations:
            spec = {"positions": positions, "channels": args.channels, "batch": args.batch, "heads": args.heads,
                    "implementation": implementation, "threads": args.threads}
            row: dict[str, Any] = {**spec, "grid": list(grid_for(positions))}
            needed = naive_bytes(positions, args.batch, args.heads)
            if implementation == "naive" and needed > args.max_naive_gib * 2**30:
                row["skipped"] = f"needs about {needed / 2**30:.0f} GiB (> --max-naive-gib {args.max_naive_gib})"
                rows.append(row)
                print(f"[tat bench] N={positions} {implementation}: skipped ({row['skipped']})")
                continue
            step = loss_setup(positions, args.channels, args.batch, args.heads, implementation, device)
            row.update(median_ms(step, device, args.repeats, args.warmup))
            del step
            row.update(peak_memory_mb(spec, device))
            rows.append(row)
            print(f"[tat bench] N={positions} {implementation}: {row['median_ms']:.2f} ms, peak {row.get('peak_mb')} MB")
    return rows


def overhead_benchmark(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from pipeline.builders import build_distiller, build_student, build_teacher
    from pipeline.config import load_config
    from pipeline.data import dataset_info
    from pipeline.training import SupervisedObjective, build_optimizer

    config = load_config(args.config, args.overrides)
    train_cfg = config.student.train
    size, batch = config.data.image_size, train_cfg.batch_size
    num_classes = dataset_info(config.data).num_classes
    torch.manual_seed(0)
    student = build_student(config)
    plain = SupervisedObjective(copy.deepcopy(student)).to(device)
    distiller = build_distiller(config, build_teacher(config), student).to(device)
    distill_optimizer, plain_optimizer = build_optimizer(distiller, train_cfg), build_optimizer(plain, train_cfg)
    images = torch.randn(batch, 3, size, size, device=device)
    targets = torch.randint(0, num_classes, (batch, size, size), device=device)
    distiller.train()
    plain.train()

    def teacher_forward() -> None:
        with torch.no_grad():
            distiller.teacher.forward_features(images)

    timing = {
        "distill_step": median_ms(train_step(distiller, distill_optimizer, images, targets), device, args.overhead_repeats, args.warmup),
        "teacher_forward": median_ms(teacher_forward, device, args.overhead_repeats, args.warmup),
        "student_step": median_ms(train_step(plain, plain_optimizer, images, targets), device, args.overhead_repeats, args.warmup),
    }
    reference = timing["teacher_forward"]["median_ms"] + timing["student_step"]["median_ms"]
    overhead = timing["distill_step"]["median_ms"] / reference
    print(f"[tat bench] distillation step overhead {overhead:.3f} "
          f"({timing['distill_step']['median_ms']:.1f} ms / {reference:.1f} ms)")
    return {
        "config": str(args.config),
        "overrides": list(args.overrides),
        "methods": [spec.model_dump() for spec in config.distill.methods],
        "batch_size": batch,
        "image_size": size,
        "teacher": config.teacher.model.backbone,
        "student": config.student.model.backbone,
        "timing": timing,
        "overhead": round(overhead, 4),
        "formula": "distill_step / (teacher_forward + student_step)",
    }


# ------------------------------------------------------------------------------- output
def markdown(result: dict[str, Any]) -> str:
    lines = ["# TaT benchmark", "", f"`{result['command']}`", "",
             f"Machine: {result['machine']['platform']}, device {result['machine']['device']}"
             + (f" ({result['machine']['gpu']})" if "gpu" in result["machine"] else "")
             + f", torch {result['machine']['versions']['torch']}, {result['machine']['torch_threads']} threads.", ""]
    if result.get("attention"):
        lines += ["## TaT loss forward + backward (one-to-all, parametric, float32)", "",
                  f"Peak memory: {result['memory_method']}.", ""]
        rows = []
        for row in result["attention"]:
            rows.append([row["positions"], "x".join(map(str, row["grid"])), row["channels"], row["batch"], row["heads"],
                         row["implementation"], row.get("median_ms", row.get("skipped")), row.get("peak_mb")])
        lines += [markdown_table(["N", "H x W", "C", "batch", "heads", "attention", "median ms", "peak MB"], rows), ""]
    if result.get("overhead"):
        overhead = result["overhead"]
        timing = overhead["timing"]
        lines += ["## Distillation step overhead", "",
                  f"Config `{overhead['config']}` {' '.join(overhead['overrides'])}: teacher {overhead['teacher']}, "
                  f"student {overhead['student']}, batch {overhead['batch_size']} at {overhead['image_size']} px, "
                  f"methods {', '.join(m['name'] for m in overhead['methods'])}.", "",
                  markdown_table(["distill step ms", "teacher forward ms", "student step ms", "overhead"],
                                 [[timing["distill_step"]["median_ms"], timing["teacher_forward"]["median_ms"],
                                   timing["student_step"]["median_ms"], overhead["overhead"]]]),
                  "", f"overhead = {overhead['formula']} (medians).", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.benchmarks.tat", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of --config (overhead part)")
    parser.add_argument("--out", type=Path, default=Path("exported/benchmarks/tat"), help="folder for tat.json, tat.md")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (CPU)")
    parser.add_argument("--positions", type=int, nargs="+", default=list(DEFAULT_POSITIONS), help="N = H*W values")
    parser.add_argument("--channels", type=int, default=256, help="feature channels (the decoder's 256 by default)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--implementations", nargs="+", choices=("sdpa", "naive"), default=["sdpa", "naive"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--max-naive-gib", type=float, default=16.0, help="skip naive attention needing more")
    parser.add_argument("--config", type=Path, default=Path("configs/default.yaml"), help="config of the overhead part")
    parser.add_argument("--overhead-repeats", type=int, default=10)
    parser.add_argument("--skip-attention", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--peak-rss-child", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.peak_rss_child:
        print(json.dumps(cpu_peak_child(json.loads(args.peak_rss_child))))
        return 0
    from pipeline.environment import select_device

    device = select_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "command": "python -m pipeline.benchmarks.tat " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(device),
        "memory_method": ("torch.cuda.max_memory_allocated during one forward + backward, above the memory "
                          "allocated before it" if device.type == "cuda" else
                          "peak resident set size of a fresh process during one forward + backward, above its "
                          "resident size just before it (includes allocator slack; resolution a few MB)"),
    }
    if not args.skip_attention:
        result["attention"] = attention_benchmark(args, device)
    if not args.skip_overhead:
        result["overhead"] = overhead_benchmark(args, device)
    write_results(args.out, "tat", result, markdown(result), "tat bench")
    return 0


if __name__ == "__main__":
    sys.exit(main())
