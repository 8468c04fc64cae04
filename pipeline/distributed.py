"""torch.distributed for ``torchrun --nproc_per_node=N -m pipeline run ...``.

One process per device. The process group is set up from torchrun's environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): nccl on CUDA, gloo on CPU. Without that environment
every helper here answers as a single process (rank 0 of 1), so the rest of the code never
branches on "is this distributed?" beyond asking :func:`is_main`.

Conventions: ``train.batch_size`` is the GLOBAL batch; each rank loads batch_size / world_size.
Rank 0 alone writes files. The run folder must be on a filesystem every node sees (later training
stages read earlier stages' weights from it).
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

# Non-training stages (export, validation, engine builds) run on rank 0 while the other ranks wait
# at a barrier; the default 10-30 minute collective timeout would kill them during a long one.
BARRIER_TIMEOUT = _dt.timedelta(hours=6)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device_type: str | None = None) -> bool:
    """Join the process group torchrun describes; False (and nothing done) for a single process."""
    if not launched_by_torchrun() or dist.is_initialized():
        return dist.is_initialized()
    cuda = (device_type or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=BARRIER_TIMEOUT)
    return True


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a no-op for a single process)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(array: np.ndarray, device: torch.device) -> np.ndarray:
    """Element-wise sum over ranks (confusion matrices, counters); int64 stays exact."""
    if not active():
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy()


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
    if active():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def per_rank_batch(global_batch: int, desc: str) -> int:
    """Each rank's share of the global batch; it must divide evenly so every step sees the same images."""
    size = world_size()
    if global_batch % size:
        raise ValueError(f"{desc}: batch_size {global_batch} is the global batch and must be divisible by the "
                         f"{size} processes; use a multiple of {size}")
    return global_batch // size
