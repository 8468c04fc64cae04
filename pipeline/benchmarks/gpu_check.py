"""The GPU check: what a CUDA machine proves about this project in about 8 minutes, as one table.

    make gpu-check                                                     # on a CUDA machine
    python -m pipeline.benchmarks.gpu_check --out exported/gpu-check [--quick] [--allow-cpu]

1. The smoke pipeline trained on the GPU with the options GPU users turn on (bf16 autocast,
   channels_last, torch.compile), then exported, validated and benchmarked: trained figures, seconds
   per step, and every backend row this machine can run (parity, mIoU delta, latency); the rows it
   cannot run say why.
2. The GPU training benchmark at the paper's crop (513): teacher and TaT distillation images/s and
   peak memory, and the TaT one-to-all loss at N = 16641 positions, naive against SDPA.

Each part runs in its own process with a time limit; a part that fails becomes a row saying so (its
last output lines in gpu_check.json), so one failure never hides the other figures. ``--quick`` (small
sizes) with ``--allow-cpu`` tests the command on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.reporting.tables import Table
from pipeline.status import Status

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"


def smoke_command(out: Path, device: str, quick: bool) -> list[str]:
    gpu = ["run.amp=bf16", "run.channels_last=true", "run.compile=true"] if device == "cuda" else []
    small = ["teacher.train.epochs=1", "student.train.epochs=1", "data.train_size=32", "data.val_size=8",
             "benchmark.min_iters=5", "benchmark.min_seconds=0.1", "report.samples=0",
             "export.dynamic=false"] if quick else []  # a static export traces in half the time
    return [sys.executable, "-m", "pipeline", "run", str(SMOKE), "--out", str(out), f"run.device={device}", *gpu,
            *small]


def training_command(out: Path, device: str, quick: bool) -> list[str]:
    command = [sys.executable, "-m", "pipeline.benchmarks.gpu_training", "--out", str(out)]
    if device == "cuda":
        command += ["--amp", "bf16", "--channels-last"]
    if quick:
        command += ["--allow-cpu", "--size", "33", "--batch", "2", "--steps", "1", "--warmup", "0", "--tat-size", "9"]
    return command


def run_part(name: str, command: list[str], timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or "")[-2000:] if isinstance(exc.stdout, str) else ""
        return {"part": name, "status": f"timed out after {timeout:.0f} s", "output_tail": tail}
    seconds = round(time.perf_counter() - started, 1)
    status = Status.OK if done.returncode == 0 else f"failed (exit {done.returncode})"
    return {"part": name, "status": status, "seconds": seconds,
            "output_tail": (done.stdout[-2000:] + done.stderr[-2000:]) if done.returncode else ""}


def smoke_rows(run_dir: Path) -> list[list[Any]]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = [[f"smoke: {key} mIoU", metrics[key].get("miou"), f"{metrics[key].get('seconds_per_step')} s/step"]
            for key in ("teacher", "student_baseline", "student") if key in metrics]
    for name, backend in metrics.get("backends", {}).items():
        if "-" not in name:
            continue  # legacy aliases repeat the -fp32 rows
        if backend.get("status") == Status.SKIPPED:
            rows.append([f"backend {name}", Status.SKIPPED, backend.get("reason")])
            continue
        latency = backend.get("latency_ms", {}).get("p50")
        rows.append([f"backend {name}", backend.get("status"),
                     f"max abs diff {backend.get('max_abs_diff')}, mIoU delta {backend.get('miou_delta')}, "
                     f"p50 {latency} ms"])
    return rows


def training_rows(out: Path) -> list[list[Any]]:
    figures = json.loads(out.with_suffix(".json").read_text())
    rows = []
    for name, result in figures["results"].items():
        if "status" in result:
            rows.append([f"training: {name}", result["status"], ""])
            continue
        if "images_per_second" in result:
            figure = f"{result['images_per_second']} images/s"
        else:
            figure = f"{result.get('ms_forward_backward')} ms fwd+bwd at N = {result.get('positions')}"
        rows.append([f"training: {name}", figure, f"peak {result.get('peak_gpu_memory_mb')} MB"])
    return rows


def gpu_check(out: Path, device: str, quick: bool, timeout: float) -> tuple[dict[str, Any], str]:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    machine = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "torch": torch.__version__,
               "cuda": torch.version.cuda}
    parts = [run_part("smoke pipeline", smoke_command(out / "smoke", device, quick), timeout),
             run_part("training benchmark", training_command(out / "gpu_training", device, quick), timeout)]
    rows: list[list[Any]] = [[f"part: {p['part']}", p["status"], f"{p.get('seconds', '-')} s"] for p in parts]
    readers = ((parts[0], lambda: smoke_rows(out / "smoke")), (parts[1], lambda: training_rows(out / "gpu_training")))
    for part, read in readers:
        if part["status"] == Status.OK:
            rows += read()
    table = Table(["check", "figure", "detail"], rows)
    markdown = (f"# GPU check\n\n{machine['device']}, torch {machine['torch']} (CUDA {machine['cuda']})\n\n"
                f"{table.markdown()}\n")
    result = {"machine": machine, "parts": parts, "rows": rows}
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "gpu_check.md").write_text(markdown)
    return result, markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("exported/gpu-check"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: test the command, not the GPU")
    parser.add_argument("--allow-cpu", action="store_true", help="run on CPU when no GPU is visible")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds each part may take")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("error: no CUDA device is visible; the GPU check needs one (--allow-cpu --quick tests the command)",
              file=sys.stderr)
        return 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result, markdown = gpu_check(args.out, device, args.quick, args.timeout)
    print(markdown)
    return 0 if all(part["status"] == Status.OK for part in result["parts"]) else 1


if __name__ == "__main__":
    sys.exit(main())
