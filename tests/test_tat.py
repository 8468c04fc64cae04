"""TaT losses (pipeline/distill/tat.py): the fused attention equals the materialised reference,
the non-parametric loss is exactly the docs/METHODS.md formula, gradients never reach the teacher, and
the patch/group rearrangement keeps every position where it belongs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.distill import AnchorPointTaTLoss, HierarchicalTaTLoss, PatchGroupTaTLoss, TaTLoss
from pipeline.distill.tat import from_patches, to_patches


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def features(cs: int, ct: int, height: int, width: int, batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, cs, height, width, generator=generator),
            torch.randn(batch, ct, height, width, generator=generator))


def sdpa_and_naive(module, f_s, f_t):
    """The same module (same weights, same BN batch statistics) through both attention paths."""
    module.implementation = "sdpa"
    fused, target = module.reconfigure(f_s, f_t)
    loss_fused = F.mse_loss(fused, target)
    module.implementation = "naive"
    naive, _ = module.reconfigure(f_s, f_t)
    return fused, naive, loss_fused, F.mse_loss(naive, target)


CASES = [
    # (module factory, student channels, teacher channels, H, W) -- odd, non-square sizes
    (lambda cs, ct, q: TaTLoss(cs, ct, heads=1, query=q), 5, 6, 7, 9),
    (lambda cs, ct, q: TaTLoss(cs, ct, heads=3, query=q), 10, 12, 11, 5),
    (lambda cs, ct, q: TaTLoss(cs, ct, parametric=False, heads=2, query=q), 7, 8, 9, 13),
    (lambda cs, ct, q: PatchGroupTaTLoss(cs, ct, query=q, patches=(3, 2), groups=3), 4, 6, 13, 9),
    (lambda cs, ct, q: AnchorPointTaTLoss(cs, ct, query=q, anchors=(3, 5)), 6, 6, 11, 17),
    (lambda cs, ct, q: AnchorPointTaTLoss(cs, ct, heads=2, query=q, anchors=(5, 3), per_image=True), 3, 4, 15, 7),
]


@pytest.mark.parametrize("query", ["student", "teacher"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_sdpa_matches_the_materialised_attention_in_float32(case, query):
    factory, cs, ct, height, width = CASES[case]
    torch.manual_seed(case)
    module = factory(cs, ct, query)
    # Scaled inputs make the unscaled softmax neither uniform nor one-hot.
    f_s, f_t = features(cs, ct, height, width, seed=case)
    fused, naive, loss_fused, loss_naive = sdpa_and_naive(module, 0.3 * f_s, 0.3 * f_t)
    assert fused.dtype == torch.float32
    assert relative_error(fused, naive) <= 1e-5
    assert abs(loss_fused.item() - loss_naive.item()) <= 1e-5 * abs(loss_naive.item())


def test_sdpa_runs_a_fused_kernel_that_never_stores_the_n_by_n_matrix():
    """A strided query/key/value makes SDPA fall back silently to the math kernel (as much memory
    as the naive attention): the heads must reach it contiguous."""
    from pipeline.distill.tat import attention, split_heads

    features = [torch.randn(2, 8, 5, 7, requires_grad=True) for _ in range(3)]
    out = attention(*(split_heads(f, 2) for f in features), implementation="sdpa")
    assert "UnsafeView" not in type(out.grad_fn).__name__
    assert any(kind in type(out.grad_fn).__name__ for kind in ("Flash", "Efficient", "Cudnn")), type(out.grad_fn)


def test_non_parametric_equal_widths_is_the_methods_formula_computed_by_hand():
    f_s, f_t = features(4, 4, 3, 5, batch=2)
    # docs/METHODS.md: out_i = sum_j softmax_j(<f_s_i, f_t_j>) f_s_j ; L = mean((out - f_t)^2)
    expected = 0.0
    for b in range(2):
        s = f_s[b].reshape(4, -1).T  # N x C, positions in raster order
        t = f_t[b].reshape(4, -1).T
        for i in range(s.shape[0]):
            logits = torch.tensor([float(s[i] @ t[j]) for j in range(t.shape[0])])
            weights = logits.exp() / logits.exp().sum()
            out_i = sum(weights[j] * s[j] for j in range(s.shape[0]))
            expected += float(((out_i - t[i]) ** 2).sum())
    expected /= f_t.numel()
    loss = TaTLoss(4, 4, parametric=False)(f_s, f_t)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert list(TaTLoss(4, 4, parametric=False).parameters()) == []


def test_teacher_query_orientation_is_the_papers_index_form():
    f_s, f_t = features(3, 3, 2, 3, batch=1)
    s, t = f_s[0].reshape(3, -1).T, f_t[0].reshape(3, -1).T
    # w_j^i = softmax_j(<f_s_j, f_t_i>), out_i = sum_j w_j^i f_s_j
    out = torch.softmax(t @ s.T, dim=-1) @ s
    expected = F.mse_loss(out, t)
    assert TaTLoss(3, 3, parametric=False, query="teacher")(f_s, f_t).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("module", [
    TaTLoss(6, 8, heads=2),
    TaTLoss(6, 8, parametric=False),  # channel alignment is the only trainable part
    TaTLoss.for_classification(6, 8),
    PatchGroupTaTLoss(6, 8, patches=(2, 3), groups=2),
    AnchorPointTaTLoss(6, 8, anchors=(2, 2), query="teacher"),
], ids=["global", "non-parametric-aligned", "classification-3x3", "patch", "anchor"])
def test_gradients_reach_the_student_and_projections_never_the_teacher(module):
    f_s, f_t = features(6, 8, 6, 7)
    f_s.requires_grad_(True)
    f_t.requires_grad_(True)
    module(f_s, f_t).backward()
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    assert f_t.grad is None, "the teacher feature must be detached"
    trainable = [p for p in module.parameters()]
    assert trainable and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)


def test_classification_variant_has_3x3_gamma_phi_and_identity_theta():
    module = TaTLoss.for_classification(16, 32)
    assert module.gamma[0].kernel_size == (3, 3) and module.phi[0].kernel_size == (3, 3)
    assert isinstance(module.theta, torch.nn.Identity)
    f_s, f_t = features(16, 32, 7, 7)
    assert module(f_s, f_t).dim() == 0


def test_per_image_mode_averages_single_image_losses():
    torch.manual_seed(0)
    module = TaTLoss(4, 4, per_image=True)
    f_s, f_t = features(4, 4, 5, 5, batch=3)
    module.per_image = False
    singles = torch.stack([module(f_s[i : i + 1], f_t[i : i + 1]) for i in range(3)]).mean()
    module.per_image = True
    assert module(f_s, f_t).item() == pytest.approx(singles.item(), rel=1e-6)


# ------------------------------------------------------------------ patch rearrangement
def test_patch_round_trip_restores_the_feature_when_sizes_divide():
    x = torch.randn(2, 5, 12, 9)
    assert torch.equal(from_patches(to_patches(x, (4, 3)), (4, 3)), x)


def test_leftover_rows_and_columns_are_dropped():
    x = torch.randn(2, 5, 14, 11)  # 14 = 4*3 + 2, 11 = 3*3 + 2
    patched = to_patches(x, (4, 3))
    assert patched.shape == (2, 4 * 3 * 5, 3, 3)
    assert torch.equal(from_patches(patched, (4, 3)), x[:, :, :12, :9])


def test_patches_are_stacked_in_raster_order_and_groups_hold_consecutive_patches():
    channels, n, m, ph, pw = 3, 2, 3, 2, 2
    x = torch.randn(1, channels, n * ph, m * pw)
    patched = to_patches(x, (n, m))
    for k in range(n * m):
        row, col = divmod(k, m)  # raster order
        expected = x[0, :, row * ph : (row + 1) * ph, col * pw : (col + 1) * pw]
        assert torch.equal(patched[0, k * channels : (k + 1) * channels], expected)
    # groups=3 over 6 patches: group g holds patches 2g and 2g+1 (its channels are consecutive)
    groups = 3
    per_group = n * m // groups
    grouped = patched.reshape(1, groups, per_group * channels, ph, pw)
    for g in range(groups):
        expected = torch.cat([patched[0, k * channels : (k + 1) * channels] for k in range(g * per_group, (g + 1) * per_group)])
        assert torch.equal(grouped[0, g], expected)


def test_patch_group_loss_equals_global_tat_on_each_patch_when_each_patch_is_a_group():
    """groups == n*m: every patch attends only inside itself, like a TaT per patch."""
    f_s, f_t = features(4, 4, 6, 4, batch=1)
    loss = PatchGroupTaTLoss(4, 4, parametric=False, patches=(3, 2), groups=6)(f_s, f_t)
    per_patch = [TaTLoss(4, 4, parametric=False)(f_s[:, :, r * 2 : r * 2 + 2, c * 2 : c * 2 + 2],
                                                f_t[:, :, r * 2 : r * 2 + 2, c * 2 : c * 2 + 2])
                 for r in range(3) for c in range(2)]
    assert loss.item() == pytest.approx(torch.stack(per_patch).mean().item(), rel=1e-5)


def test_anchor_loss_pools_with_kernel_feature_over_anchors():
    f_s, f_t = features(4, 4, 8, 12, batch=1)
    loss = AnchorPointTaTLoss(4, 4, parametric=False, anchors=(4, 3))(f_s, f_t)
    pooled = TaTLoss(4, 4, parametric=False)(F.avg_pool2d(f_s, (2, 4)), F.avg_pool2d(f_t, (2, 4)))
    assert loss.item() == pytest.approx(pooled.item(), rel=1e-6)


# ----------------------------------------------------------------------- bad settings
@pytest.mark.parametrize("build, message", [
    (lambda: PatchGroupTaTLoss(4, 4, patches=(3, 3), groups=4), "groups=4 must divide the number of patches n*m = 9"),
    (lambda: TaTLoss(4, 8, parametric=False, align=False), "set align=True"),
    (lambda: TaTLoss(4, 8, query="both"), "query must be 'student'"),
    (lambda: TaTLoss(4, 9, heads=2)(*features(4, 9, 3, 3)), "cannot be split into 2 heads"),
    (lambda: PatchGroupTaTLoss(4, 4, patches=(8, 2), groups=1)(*features(4, 4, 5, 5)), "use at most (5, 5)"),
    (lambda: AnchorPointTaTLoss(4, 4, anchors=(2, 9))(*features(4, 4, 5, 5)), "use at most (5, 5)"),
    (lambda: TaTLoss(4, 4)(torch.randn(1, 4, 3, 3), torch.randn(1, 4, 4, 3)), "same stride"),
])
def test_impossible_settings_say_what_to_change(build, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        build()


def test_hierarchical_loss_is_the_weighted_patch_and_anchor_losses_on_one_set_of_projections():
    torch.manual_seed(0)
    combined = HierarchicalTaTLoss(6, 8, patches=(2, 3), groups=3, anchors=(2, 2), patch_weight=1.0, anchor_weight=0.4)
    patch = PatchGroupTaTLoss(6, 8, patches=(2, 3), groups=3)
    anchor = AnchorPointTaTLoss(6, 8, anchors=(2, 2))
    for single in (patch, anchor):  # the same projections as the combined loss's one set
        for name in ("gamma", "theta", "phi"):
            setattr(single, name, getattr(combined.patch, name))
    f_s, f_t = torch.randn(2, 6, 7, 9), torch.randn(2, 8, 7, 9)
    expected = patch(f_s, f_t) + 0.4 * anchor(f_s, f_t)
    torch.testing.assert_close(combined(f_s, f_t), expected, rtol=1e-6, atol=1e-7)
    names = {name for name, _ in combined.named_parameters()}
    assert not any(name.startswith("anchor.") for name in names), "projections must exist once"
    assert len(names) == len(list(patch.parameters()))
