"""What the benchmark commands share: timing, the machine record, one training step, the output files."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline.artifacts import atomic_write_json, atomic_write_text


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(step: Callable[[], None], device: torch.device, repeats: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        step()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        synchronize(device)
        samples.append((time.perf_counter() - started) * 1000)
    return {"median_ms": round(statistics.median(samples), 3), "min_ms": round(min(samples), 3),
            "repeats": repeats}


def train_step(task: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               targets: torch.Tensor) -> Callable[[], None]:
    """One training step of a task whose forward returns (loss, parts)."""
    def step() -> None:
        loss, _ = task(images, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def machine(device: torch.device) -> dict[str, Any]:
    from pipeline.environment import git_sha, hardware_fingerprint, versions

    info = {"platform": platform.platform(), "processor": platform.processor(), "torch_threads": torch.get_num_threads(),
            "device": str(device), "hardware": hardware_fingerprint(device), "git_sha": git_sha(),
            "versions": versions()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_results(out: Path, stem: str, result: dict[str, Any], markdown: str, tag: str) -> None:
    atomic_write_json(out / f"{stem}.json", result)
    atomic_write_text(out / f"{stem}.md", markdown)
    print(f"[{tag}] wrote {out / f'{stem}.json'} and {out / f'{stem}.md'}")
