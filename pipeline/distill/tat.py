"""Target-aware Transformer (TaT) distillation losses, usable in any training loop.

Knowledge Distillation via the Target-aware Transformer (CVPR 2022); exact specification in
docs/METHODS.md section 1. Each loss is an ``nn.Module`` called as ``loss = module(f_s, f_t)`` on
(B, C, H, W) student and teacher features; the teacher is always detached.

- :class:`TaTLoss`: one-to-all matching. The student feature is reconfigured by attention
  against the teacher feature and regressed onto the raw teacher feature (MSE).
- :class:`PatchGroupTaTLoss`: the same inside n x m patches whose channels are grouped g ways
  (local features and their spatial pattern).
- :class:`AnchorPointTaTLoss`: the same on average-pooled "anchor" maps (global, coarse).

Roles. ``query="student"`` (default, the official code and the published numbers):
Q = gamma(f_s), K = theta(f_t), V = phi(f_s). ``query="teacher"`` (the paper's index form): for
each teacher position a softmax over student positions, Q = theta(f_t), K = gamma(f_s),
V = phi(f_s). The similarity is a plain dot product: no 1/sqrt(d), no temperature.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Orientation = Literal["student", "teacher"]
Attention = Literal["sdpa", "naive"]


# ----------------------------------------------------------------------------- attention
def attention(query: Tensor, key: Tensor, value: Tensor, implementation: Attention = "sdpa") -> Tensor:
    """softmax(Q K^T) V over the last two axes of (B, heads, N, d) tensors, unscaled.

    ``"sdpa"`` uses PyTorch's fused kernels (memory-efficient / flash: the N x N matrix is never
    stored); ``"naive"`` materialises it and is the reference the tests compare against.
    """
    if implementation == "sdpa":
        return F.scaled_dot_product_attention(query, key, value, scale=1.0)
    if implementation == "naive":
        weights = torch.softmax(query @ key.transpose(-2, -1), dim=-1)
        return weights @ value
    raise ValueError(f"attention implementation must be 'sdpa' or 'naive', got {implementation!r}")


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, C, H, W) -> (B, heads, H*W, C // heads): each head owns consecutive channels."""
    batch, channels, height, width = x.shape
    # Contiguous: the fused CPU kernel (flash attention) needs a unit-stride last axis; on a strided
    # view SDPA silently falls back to the math kernel, which stores the N x N matrix like naive.
    return x.reshape(batch, heads, channels // heads, height * width).transpose(-2, -1).contiguous()


def merge_heads(x: Tensor, height: int, width: int) -> Tensor:
    """Inverse of :func:`split_heads`: (B, heads, H*W, d) -> (B, heads*d, H, W)."""
    batch, heads, _, dim = x.shape
    return x.transpose(-2, -1).reshape(batch, heads * dim, height, width)


# ------------------------------------------------------------------ patch rearrangement
def to_patches(x: Tensor, patches: tuple[int, int]) -> Tensor:
    """(B, C, H, W) -> (B, n*m*C, H // n, W // m): n x m patches stacked channel-wise.

    Patches are taken in raster order (patch k = row k // m, column k % m); channels
    [k*C, (k+1)*C) hold patch k. Rows and columns beyond n * (H // n) and m * (W // m) are
    dropped, as in the official code.
    """
    n, m = patches
    batch, channels, height, width = x.shape
    ph, pw = height // n, width // m
    if ph == 0 or pw == 0:
        raise ValueError(f"patches=({n}, {m}) needs a feature of at least {n}x{m}; got {height}x{width}")
    x = x[:, :, : n * ph, : m * pw]
    x = x.reshape(batch, channels, n, ph, m, pw).permute(0, 2, 4, 1, 3, 5)  # B, n, m, C, ph, pw
    return x.reshape(batch, n * m * channels, ph, pw)


def from_patches(x: Tensor, patches: tuple[int, int]) -> Tensor:
    """Inverse of :func:`to_patches` (up to the dropped remainder): (B, n*m*C, ph, pw) -> (B, C, n*ph, m*pw)."""
    n, m = patches
    batch, stacked, ph, pw = x.shape
    channels = stacked // (n * m)
    x = x.reshape(batch, n, m, channels, ph, pw).permute(0, 3, 1, 4, 2, 5)  # B, C, n, ph, m, pw
    return x.reshape(batch, channels, n * ph, m * pw)


# --------------------------------------------------------------------------- projections
def conv_bn(in_channels: int, out_channels: int, kernel_size: int = 1) -> nn.Sequential:
    """Conv without bias + BatchNorm, no activation (the official gamma/theta/phi)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class _TaTBase(nn.Module):
    """Projections, orientation, per-image mode and the MSE; subclasses choose how positions are
    arranged (global, patch groups, anchors) through :meth:`arrange` and :attr:`heads`."""

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        parametric: bool = True,
        heads: int = 1,
        query: Orientation = "student",
        *,
        kernel_size: int = 1,
        project_teacher: bool = True,
        align: bool = True,
        per_image: bool = False,
        implementation: Attention = "sdpa",
    ) -> None:
        super().__init__()
        if student_channels < 1 or teacher_channels < 1:
            raise ValueError(f"channel counts must be positive, got student {student_channels}, teacher {teacher_channels}")
        if query not in ("student", "teacher"):
            raise ValueError(f"query must be 'student' (official code) or 'teacher' (paper's index form), got {query!r}")
        if implementation not in ("sdpa", "naive"):
            raise ValueError(f"implementation must be 'sdpa' or 'naive', got {implementation!r}")
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        if kernel_size not in (1, 3):
            raise ValueError(f"kernel_size must be 1 (segmentation) or 3 (the ImageNet variant), got {kernel_size}")
        self.student_channels = student_channels
        self.teacher_channels = teacher_channels
        self.parametric = parametric
        self.heads = heads
        self.query = query
        self.per_image = per_image
        self.implementation = implementation
        if parametric:
            self.gamma: nn.Module = conv_bn(student_channels, teacher_channels, kernel_size)
            self.theta: nn.Module = conv_bn(teacher_channels, teacher_channels) if project_teacher else nn.Identity()
            self.phi: nn.Module = conv_bn(student_channels, teacher_channels, kernel_size)
        else:
            if student_channels != teacher_channels and not align:
                raise ValueError(
                    f"non-parametric TaT compares student and teacher channel by channel, but the student has "
                    f"{student_channels} channels and the teacher {teacher_channels}; set align=True (a 1x1 conv + BN "
                    f"on the student) or parametric=True"
                )
            # gamma = phi = the (aligned) student feature, theta = identity.
            aligner = conv_bn(student_channels, teacher_channels) if student_channels != teacher_channels else nn.Identity()
            self.gamma = self.phi = aligner
            self.theta = nn.Identity()

    # The part subclasses change ------------------------------------------------------
    def arrange(self, query: Tensor, key: Tensor, value: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Rearrange the four (B, C_t, H, W) maps into the maps the attention runs on."""
        return query, key, value, target

    # ---------------------------------------------------------------------------------
    def check_shapes(self, f_s: Tensor, f_t: Tensor) -> None:
        if f_s.dim() != 4 or f_t.dim() != 4:
            raise ValueError(f"TaT expects (B, C, H, W) features; got student {tuple(f_s.shape)}, teacher {tuple(f_t.shape)}")
        if f_s.shape[1] != self.student_channels or f_t.shape[1] != self.teacher_channels:
            raise ValueError(
                f"built for {self.student_channels} student / {self.teacher_channels} teacher channels, got "
                f"{f_s.shape[1]} / {f_t.shape[1]}"
            )
        if f_s.shape[0] != f_t.shape[0] or f_s.shape[-2:] != f_t.shape[-2:]:
            raise ValueError(
                f"student {tuple(f_s.shape)} and teacher {tuple(f_t.shape)} features must share batch and H x W; "
                f"tap features of the same stride (or resize one first)"
            )

    def reconfigure(self, f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
        """(reconfigured student, target), both in the arranged layout the MSE compares."""
        return self.match(*self.project(f_s, f_t))

    def project(self, f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(query, key, value, target) before arrangement: gamma/theta/phi applied, teacher detached."""
        f_t = f_t.detach()
        student_query, student_value = self.gamma(f_s), self.phi(f_s)
        teacher_key = self.theta(f_t)
        if self.query == "student":
            return student_query, teacher_key, student_value, f_t
        return teacher_key, student_query, student_value, f_t

    def match(self, query: Tensor, key: Tensor, value: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Arrange the projected maps, attend, and return (reconfigured student, target)."""
        query, key, value, target = self.arrange(query, key, value, target)
        heads = self.attention_heads
        if query.shape[1] % heads:
            raise ValueError(f"{query.shape[1]} channels cannot be split into {heads} heads/groups")
        height, width = query.shape[-2:]
        out = attention(split_heads(query, heads), split_heads(key, heads), split_heads(value, heads), self.implementation)
        return merge_heads(out, height, width), target

    @property
    def attention_heads(self) -> int:
        return self.heads

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        self.check_shapes(f_s, f_t)
        if self.per_image:
            # The official segmentation code: one image at a time (BN sees batch 1), then the mean.
            losses = [F.mse_loss(*self.reconfigure(f_s[i : i + 1], f_t[i : i + 1])) for i in range(f_s.shape[0])]
            return torch.stack(losses).mean()
        return F.mse_loss(*self.reconfigure(f_s, f_t))

    def extra_repr(self) -> str:
        return (f"student_channels={self.student_channels}, teacher_channels={self.teacher_channels}, "
                f"parametric={self.parametric}, heads={self.attention_heads}, query={self.query!r}, "
                f"per_image={self.per_image}, implementation={self.implementation!r}")


class TaTLoss(_TaTBase):
    """One-to-all TaT: every student position is rebuilt from all positions, weighted by its
    similarity to the teacher, then regressed onto the raw teacher feature.

    Args:
        student_channels, teacher_channels: C_s and C_t of the (B, C, H, W) inputs.
        parametric: gamma/theta/phi are 1x1 conv + BN (default); ``False`` makes them identities
            (with a 1x1 conv + BN channel alignment on the student when C_s != C_t and ``align``).
        heads: the C_t channels are split into this many attention heads.
        query: ``"student"`` (official code, default) or ``"teacher"`` (paper's index form).
        kernel_size: 3 gives the ImageNet variant's 3x3 gamma and phi.
        project_teacher: ``False`` makes theta an identity (the ImageNet variant).
        per_image: compute the loss one image at a time and average (official segmentation code).
        implementation: ``"sdpa"`` (fused kernels) or ``"naive"`` (materialised N x N reference).
    """

    @classmethod
    def for_classification(cls, student_channels: int, teacher_channels: int, **kwargs: object) -> "TaTLoss":
        """The ImageNet configuration: 3x3 conv + BN gamma and phi, identity theta."""
        kwargs = {"kernel_size": 3, "project_teacher": False, **kwargs}
        return cls(student_channels, teacher_channels, **kwargs)  # type: ignore[arg-type]


class PatchGroupTaTLoss(_TaTBase):
    """TaT inside patches: n x m patches (``patches=(n, m)``) of size (H // n) x (W // m), stacked
    channel-wise in raster order and split into ``groups`` groups of n*m/g consecutive patches;
    attention runs inside each group over the ph*pw positions of a patch, its similarity summed
    over the group's n*m*C_t/g channels. Leftover rows and columns are dropped."""

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        parametric: bool = True,
        query: Orientation = "student",
        *,
        patches: tuple[int, int] = (4, 4),
        groups: int = 16,
        **kwargs: object,
    ) -> None:
        n, m = patches
        if n < 1 or m < 1:
            raise ValueError(f"patches must be positive counts (n, m), got {patches}")
        if groups < 1 or (n * m) % groups:
            raise ValueError(f"groups={groups} must divide the number of patches n*m = {n * m}; "
                             f"choose one of {divisors(n * m)}")
        super().__init__(student_channels, teacher_channels, parametric, 1, query, **kwargs)  # type: ignore[arg-type]
        self.patches = (n, m)
        self.groups = groups

    @property
    def attention_heads(self) -> int:
        return self.groups

    def arrange(self, query: Tensor, key: Tensor, value: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        height, width = target.shape[-2:]
        n, m = self.patches
        if n > height or m > width:
            raise ValueError(f"patches=({n}, {m}) is more patches than the {height}x{width} feature has positions; "
                             f"use at most ({height}, {width})")
        return tuple(to_patches(x, self.patches) for x in (query, key, value, target))  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", patches={self.patches}"


class AnchorPointTaTLoss(_TaTBase):
    """TaT on anchors: the projected Q, K, V and the raw teacher feature are average-pooled with
    kernel = stride = (H // ah, W // aw) for ``anchors=(ah, aw)``, then matched one-to-all."""

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        parametric: bool = True,
        heads: int = 1,
        query: Orientation = "student",
        *,
        anchors: tuple[int, int] = (8, 8),
        **kwargs: object,
    ) -> None:
        ah, aw = anchors
        if ah < 1 or aw < 1:
            raise ValueError(f"anchors must be positive counts (ah, aw), got {anchors}")
        super().__init__(student_channels, teacher_channels, parametric, heads, query, **kwargs)  # type: ignore[arg-type]
        self.anchors = (ah, aw)

    def pool_kernel(self, height: int, width: int) -> tuple[int, int]:
        ah, aw = self.anchors
        if ah > height or aw > width:
            raise ValueError(f"anchors=({ah}, {aw}) is more anchors than the {height}x{width} feature has positions; "
                             f"use at most ({height}, {width})")
        return height // ah, width // aw

    def arrange(self, query: Tensor, key: Tensor, value: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        kernel = self.pool_kernel(*target.shape[-2:])
        return tuple(F.avg_pool2d(x, kernel, kernel) for x in (query, key, value, target))  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", anchors={self.anchors}"


class HierarchicalTaTLoss(nn.Module):
    """The official segmentation loss: patch-group and anchor-point TaT on ONE set of gamma/theta/phi
    projections (the anchors pool the already projected Q, K, V), returning
    ``patch_weight * L_patch + anchor_weight * L_anchor``. Computing the projections once halves
    the cost of two separate losses. Options are those of the two losses (``patches``, ``groups``,
    ``anchors`` and the shared TaT settings); ``heads`` applies to the anchor attention."""

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        parametric: bool = True,
        query: Orientation = "student",
        *,
        patches: tuple[int, int] = (4, 4),
        groups: int = 16,
        anchors: tuple[int, int] = (8, 8),
        heads: int = 1,
        patch_weight: float = 1.0,
        anchor_weight: float = 0.5,
        **kwargs: object,
    ) -> None:
        super().__init__()
        self.patch = PatchGroupTaTLoss(student_channels, teacher_channels, parametric, query, patches=patches,
                                       groups=groups, **kwargs)
        self.anchor = AnchorPointTaTLoss(student_channels, teacher_channels, parametric, heads, query, anchors=anchors,
                                         **kwargs)
        for name in ("gamma", "theta", "phi"):  # one set of projections, registered once under `patch`
            self.anchor._modules.pop(name)
        self.patch_weight, self.anchor_weight = patch_weight, anchor_weight

    def losses(self, f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
        """(L_patch, L_anchor), unweighted."""
        self.patch.check_shapes(f_s, f_t)
        projected = self.patch.project(f_s, f_t)
        return F.mse_loss(*self.patch.match(*projected)), F.mse_loss(*self.anchor.match(*projected))

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        if self.patch.per_image:  # the official code's one image at a time (BN sees batch 1), then the mean
            pairs = [self.losses(f_s[i : i + 1], f_t[i : i + 1]) for i in range(f_s.shape[0])]
            patch, anchor = (torch.stack(parts).mean() for parts in zip(*pairs))
        else:
            patch, anchor = self.losses(f_s, f_t)
        return self.patch_weight * patch + self.anchor_weight * anchor


def divisors(number: int) -> list[int]:
    return [d for d in range(1, number + 1) if number % d == 0]


__all__ = [
    "AnchorPointTaTLoss",
    "HierarchicalTaTLoss",
    "PatchGroupTaTLoss",
    "TaTLoss",
    "attention",
    "from_patches",
    "merge_heads",
    "split_heads",
    "to_patches",
]
