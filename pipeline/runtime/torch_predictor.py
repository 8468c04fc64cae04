"""PyTorch eager inference: the FP32 reference every exported backend is compared against."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn


class TorchPredictor:
    """Runs ``model`` in eval mode under ``torch.inference_mode()``.

    ``threads`` sets torch's intra-op thread count, which is process-wide in PyTorch; it is set
    here (not per call) because changing it per call rebuilds the thread pool.
    """

    backend = "pytorch"
    precision = "fp32"

    def __init__(self, model: nn.Module, device: str = "cpu", threads: int | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.device = str(torch.device(device))
        self.threads = threads
        self.model = model.to(self.device).eval()

    def predict(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            out = as_logits(self.model(x))
        # .cpu() waits for the device, so latency measured around predict() is complete.
        return out.float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "provider": "torch-eager",
            "threads": torch.get_num_threads(),
            "threads_requested": self.threads,
            "torch_version": torch.__version__,
        }
        if self.device.startswith("cuda"):
            info["gpu"] = torch.cuda.get_device_name(torch.device(self.device))
        return info


def as_logits(out: Any) -> torch.Tensor:
    """Accept the output conventions models use: a tensor, torchvision's {"out": ...}, or a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        return out["out"] if "out" in out else next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"model returned {type(out).__name__}; expected a logits tensor")
