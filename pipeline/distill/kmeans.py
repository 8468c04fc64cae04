"""Seeded k-means (k-means++ initialisation, Lloyd iterations) in torch, for LetKD's teacher centres."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class KMeansResult:
    centers: Tensor  # (K, D)
    inertia: float  # mean squared distance of each vector to its centre
    iterations: int
    reseeded: int  # empty clusters restarted on the worst-fitted vectors


def squared_distances(x: Tensor, centers: Tensor, chunk: int = 16384) -> Tensor:
    """(N, K) ||x_i - c_k||^2, computed in row chunks so N x K x D is never materialised."""
    c2 = centers.pow(2).sum(1)
    out = []
    for rows in x.split(chunk):
        out.append((rows.pow(2).sum(1, keepdim=True) - 2 * rows @ centers.t() + c2).clamp_(min=0))
    return torch.cat(out)


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    first = int(torch.randint(len(x), (1,), generator=generator))
    centers = [x[first]]
    closest = squared_distances(x, x[first : first + 1]).squeeze(1)
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # every vector already coincides with a centre: take any
            index = int(torch.randint(len(x), (1,), generator=generator))
        else:
            index = int(torch.multinomial(closest / total, 1, generator=generator))
        centers.append(x[index])
        closest = torch.minimum(closest, squared_distances(x, x[index : index + 1]).squeeze(1))
    return torch.stack(centers)


def kmeans(x: Tensor, k: int, iterations: int = 30, seed: int = 0, tolerance: float = 1e-6) -> KMeansResult:
    """Cluster the rows of ``x`` (N, D) into ``k`` centres; deterministic for a given seed."""
    if x.dim() != 2:
        raise ValueError(f"kmeans expects an (N, D) matrix, got shape {tuple(x.shape)}")
    if len(x) < k:
        raise ValueError(f"kmeans needs at least k={k} vectors, got {len(x)}; use fewer templates or more data")
    x = x.float()
    generator = torch.Generator(device="cpu").manual_seed(seed)
    centers = kmeans_plus_plus(x, k, generator)
    reseeded, done = 0, 0
    for done in range(1, iterations + 1):
        distances = squared_distances(x, centers)
        nearest, assignment = distances.min(dim=1)
        counts = torch.bincount(assignment, minlength=k)
        sums = torch.zeros_like(centers).index_add_(0, assignment, x)
        new_centers = sums / counts.clamp(min=1).unsqueeze(1).to(x.dtype)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):  # restart empty clusters on the vectors farthest from their centres
            worst = nearest.topk(len(empty)).indices
            new_centers[empty] = x[worst]
            reseeded += len(empty)
        shift = (new_centers - centers).pow(2).sum(1).max()
        centers = new_centers
        if shift <= tolerance and not len(empty):
            break
    inertia = float(squared_distances(x, centers).min(dim=1).values.mean())
    return KMeansResult(centers=centers, inertia=inertia, iterations=done, reseeded=reseeded)
