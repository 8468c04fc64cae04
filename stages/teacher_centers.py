"""Stage: k-means centres of a teacher feature over the training set (LetKD's targets).

Enabled only when a configured method asks for them (``teacher_centers_request``). One pass of the
trained teacher over the training images (no augmentation) collects every spatial position of the
requested feature as a vector (or a seeded uniform subsample of ``max_vectors``), then seeded
k-means. Writes ``centers.pt`` = {method name: (K, C) tensor}; the distill stage reads it (its
``load_centers``) and hands each method its centres.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from pipeline import metrics_contract as keys
from pipeline.artifacts import atomic_torch_save
from pipeline.builders import build_teacher, load_weights, teacher_centers_requests
from pipeline.data import build_dataset
from pipeline.distill.base import TeacherCentersRequest
from pipeline.distill.kmeans import kmeans
from pipeline.environment import configure_torch
from pipeline.orchestration.stage import Stage, StageContext, StageResult

CENTERS_NAME = "centers.pt"


@torch.no_grad()
def teacher_vectors(teacher: torch.nn.Module, loader: DataLoader, feature: str, images: int,
                    max_vectors: int | None, seed: int, device: torch.device) -> Tensor:
    """(N, C) teacher feature vectors, one per spatial position, optionally a seeded subsample."""
    teacher.eval().to(device)
    keep: Tensor | None = None
    chunks, seen = [], 0
    for batch, _ in loader:
        _, features = teacher.forward_features(batch.to(device))
        f = features[feature]
        vectors = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).float().cpu()
        if max_vectors is not None and keep is None:
            total = images * f.shape[2] * f.shape[3]
            if max_vectors < total:
                generator = torch.Generator().manual_seed(seed)
                keep = torch.randperm(total, generator=generator)[:max_vectors].sort().values
        if keep is not None:
            local = keep[(keep >= seen) & (keep < seen + len(vectors))] - seen
            chunks.append(vectors[local])
        else:
            chunks.append(vectors)
        seen += len(vectors)
    return torch.cat(chunks)


def run(ctx: StageContext) -> StageResult:
    config = ctx.config
    device = configure_torch(config.run)
    requests: dict[str, TeacherCentersRequest] = teacher_centers_requests(config)
    teacher = load_weights(build_teacher(config), ctx.input_path("train_teacher", "weights"))
    dataset = build_dataset(config.data, "train", augment=False)
    loader = DataLoader(dataset, batch_size=32, shuffle=False, num_workers=config.data.workers)
    centers: dict[str, Tensor] = {}
    summary: dict[str, Any] = {}
    for method, request in requests.items():
        vectors = teacher_vectors(teacher, loader, request.feature, len(dataset), request.max_vectors,
                                  request.seed, device)
        result = kmeans(vectors, request.num_centers, request.iterations, request.seed)
        centers[method] = result.centers.cpu()
        summary[method] = {"feature": request.feature, "vectors": len(vectors), "dim": vectors.shape[1],
                           "num_centers": request.num_centers, "iterations": result.iterations,
                           "inertia": round(result.inertia, 6), "reseeded_empty_clusters": result.reseeded}
        print(f"[teacher_centers] {method}: {request.num_centers} centres of teacher {request.feature} "
              f"from {len(vectors)} vectors ({result.iterations} iterations)")
    atomic_torch_save(centers, ctx.dir / CENTERS_NAME)
    return StageResult(outputs={"centers": CENTERS_NAME}, metrics={keys.TEACHER_CENTERS: summary})


STAGE = Stage(
    name="teacher_centers",
    run=run,
    inputs=("train_teacher",),
    config_keys=("data", "teacher.model", "distill.methods"),
    enabled=lambda config: bool(teacher_centers_requests(config)),
    description="k-means centres of a teacher feature over the training set (LetKD)",
)
