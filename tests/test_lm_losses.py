"""Token-level LM distillation losses: each against its written formula and its properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdrun.methods.lm_losses import (
    IGNORE,
    TopK,
    coarse_student,
    forward_kl,
    generalized_jsd,
    kl,
    lm_kd_loss,
    reverse_kl,
    soft_divergence,
    token_ce,
    topk_of,
)

V = 11


def _logits(*shape: int, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _explicit_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sum_v p log(p / q), written out with probabilities (the formula, not the code)."""
    return (p * (p.log() - q.log())).sum(-1)


def test_kl_directions_match_the_written_formulas():
    s, t = _logits(3, 5, V, seed=1), _logits(3, 5, V, seed=2)
    ps, pt = s.softmax(-1), t.softmax(-1)
    ls, lt = s.log_softmax(-1), t.log_softmax(-1)
    torch.testing.assert_close(forward_kl(ls, lt), _explicit_kl(pt, ps))
    torch.testing.assert_close(reverse_kl(ls, lt), _explicit_kl(ps, pt))
    # and forward KL is what torch's kl_div computes with the teacher as target
    torch.testing.assert_close(
        forward_kl(ls, lt), F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1)
    )


def test_jsd_matches_its_formula_and_is_symmetric_at_one_half():
    s, t = _logits(4, V, seed=3), _logits(4, V, seed=4)
    ps, pt = s.softmax(-1), t.softmax(-1)
    for beta in (0.1, 0.5, 0.9):
        m = beta * pt + (1 - beta) * ps
        want = beta * _explicit_kl(pt, m) + (1 - beta) * _explicit_kl(ps, m)
        torch.testing.assert_close(
            generalized_jsd(s.log_softmax(-1), t.log_softmax(-1), beta), want
        )
    half = generalized_jsd(s.log_softmax(-1), t.log_softmax(-1), 0.5)
    torch.testing.assert_close(half, generalized_jsd(t.log_softmax(-1), s.log_softmax(-1), 0.5))
    assert (half <= math.log(2) + 1e-6).all()  # JSD is bounded by log 2


def test_jsd_limits_are_the_two_kl_directions_up_to_scale():
    ls, lt = _logits(6, V, seed=5).log_softmax(-1), _logits(6, V, seed=6).log_softmax(-1)
    eps = 1e-4
    fwd, rev = forward_kl(ls, lt), reverse_kl(ls, lt)
    torch.testing.assert_close(generalized_jsd(ls, lt, eps) / eps, fwd, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(generalized_jsd(ls, lt, 1 - eps) / eps, rev, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(generalized_jsd(ls, lt, 0.0), fwd)
    torch.testing.assert_close(generalized_jsd(ls, lt, 1.0), rev)


@pytest.mark.parametrize("div", ["kd", "reverse_kl", "jsd"])
def test_zero_when_student_equals_teacher_and_positive_otherwise(div):
    d = {
        "kd": forward_kl,
        "reverse_kl": reverse_kl,
        "jsd": lambda a, b: generalized_jsd(a, b, 0.5),
    }[div]
    z = _logits(2, 7, V, seed=7)
    y = torch.randint(0, V, (2, 7))
    same = soft_divergence(z, z.clone(), y, 2.0, d)
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    assert float(soft_divergence(z, _logits(2, 7, V, seed=8), y, 2.0, d)) > 1e-3
    # and the gradient vanishes at equality (a minimum)
    zs = z.clone().requires_grad_(True)
    soft_divergence(zs, z, y, 2.0, d).backward()
    assert zs.grad.abs().max() < 1e-6


def test_padding_tokens_are_ignored():
    s, t = _logits(2, 6, V, seed=9), _logits(2, 6, V, seed=10)
    y = torch.randint(0, V, (2, 6))
    y[0, 3:] = IGNORE
    y[1, :2] = IGNORE
    base = lm_kd_loss(s, t, y, 2.0, 0.5)
    s2, t2 = s.clone(), t.clone()
    s2[0, 3:] += 100 * torch.randn(3, V)  # garbage where the targets are padding
    t2[1, :2] -= 50
    other = lm_kd_loss(s2, t2, y, 2.0, 0.5)
    for k in base:
        torch.testing.assert_close(base[k], other[k])
    # the mean runs over the kept tokens only: equal to the loss of the kept tokens alone
    keep = y != IGNORE
    want = forward_kl((s[keep] / 2).log_softmax(-1), (t[keep] / 2).log_softmax(-1)).mean()
    torch.testing.assert_close(base["soft"], 0.5 * 4 * want)


def test_a_batch_of_ignored_tokens_gives_zero_loss_and_gradient_not_nan():
    s, t = _logits(2, 5, V, seed=13), _logits(2, 5, V, seed=14)
    y = torch.full((2, 5), IGNORE)
    zs = s.clone().requires_grad_(True)
    assert token_ce(zs, y).item() == 0.0
    parts = lm_kd_loss(zs, t, y, 2.0, 1.0)  # alpha=1: (1 - alpha) * CE must not be NaN
    assert parts["hard"].item() == 0.0 and parts["soft"].item() == 0.0
    sum(parts.values()).backward()
    assert torch.equal(zs.grad, torch.zeros_like(s))
    # with some tokens kept, the value is torch's ignore_index mean
    y[0, :2] = torch.tensor([1, 2])
    want = F.cross_entropy(s.flatten(0, 1), y.flatten(), ignore_index=IGNORE)
    torch.testing.assert_close(token_ce(s, y), want)


def test_kd_loss_formula_and_t_squared_scaling():
    s, t = _logits(3, 4, V, seed=11), _logits(3, 4, V, seed=12)
    y = torch.randint(0, V, (3, 4))
    T, alpha = 3.0, 0.7
    parts = lm_kd_loss(s, t, y, T, alpha)
    soft = _explicit_kl((t / T).softmax(-1), (s / T).softmax(-1)).mean()
    hard = -(s.log_softmax(-1).gather(-1, y[..., None]).squeeze(-1)).mean()
    torch.testing.assert_close(parts["soft"], alpha * T * T * soft)
    torch.testing.assert_close(parts["hard"], (1 - alpha) * hard)
    # Hinton's gradient: d soft / d z_s = alpha * T * (p_s^T - p_t^T) / n_tokens
    zs = s.clone().requires_grad_(True)
    lm_kd_loss(zs, t, y, T, 1.0)["soft"].backward()
    want = T * ((s / T).softmax(-1) - (t / T).softmax(-1)) / 12
    torch.testing.assert_close(zs.grad, want, rtol=1e-4, atol=1e-6)


def test_topk_cache_is_exact_when_k_covers_the_vocabulary():
    s, t = _logits(2, 5, V, seed=13), _logits(2, 5, V, seed=14)
    y = torch.randint(0, V, (2, 5))
    for div in (forward_kl, reverse_kl, lambda a, b: generalized_jsd(a, b, 0.3)):
        full = soft_divergence(s, t, y, 2.0, div)
        cached = soft_divergence(s, topk_of(t, 2.0, V), y, 2.0, div)
        torch.testing.assert_close(cached, full)


def test_topk_summary_holds_the_k_likeliest_tokens_and_the_tail_mass():
    t = _logits(4, 50, seed=15)
    c = topk_of(t, 1.0, 5)
    p = t.softmax(-1)
    torch.testing.assert_close(c.logp.exp(), p.topk(5, -1).values)
    torch.testing.assert_close(c.log_tail.exp(), 1 - p.topk(5, -1).values.sum(-1))
    torch.testing.assert_close(c.coarse().exp().sum(-1), torch.ones(4))
    torch.testing.assert_close(coarse_student(p.log(), c.idx).exp().sum(-1), torch.ones(4))


def test_topk_kl_error_is_the_chain_rule_gap_and_small_for_peaked_teachers():
    V_big = 500
    s = _logits(64, V_big, seed=16, scale=1.0)
    t = _logits(64, V_big, seed=17, scale=4.0)  # peaked, like a trained LM's next-token dist
    ls, lt = s.log_softmax(-1), t.log_softmax(-1)
    full = forward_kl(ls, lt)
    for k in (8, 64):
        c = topk_of(t, 1.0, k)
        approx = kl(c.coarse(), coarse_student(ls, c.idx))
        gap = full - approx
        # chain rule: the gap is r_t * KL(teacher tail || student tail), both renormalised
        tail_t = lt.scatter(-1, c.idx, float("-inf"))
        tail_s = ls.scatter(-1, c.idx, float("-inf"))
        lt_n, ls_n = tail_t - c.log_tail[:, None], tail_s - tail_s.logsumexp(-1, keepdim=True)
        torch.testing.assert_close(gap, c.log_tail.exp() * kl(lt_n, ls_n), rtol=1e-3, atol=1e-4)
        assert (gap >= -1e-5).all()  # a lower bound of the full KL
        # the documented bound: the gap is at most the teacher's tail mass times the largest
        # log-ratio on the tail; for this peaked teacher and k=64 it is under 2% of the KL
        bound = c.log_tail.exp() * (lt_n - ls_n).masked_fill(tail_t == float("-inf"), 0).amax(-1)
        assert (gap <= bound + 1e-5).all()
    assert float(gap.mean() / full.mean()) < 0.02


def test_cached_loss_gradient_matches_the_full_one_for_a_peaked_teacher():
    s = _logits(8, 200, seed=18, scale=1.0).requires_grad_(True)
    t = _logits(8, 200, seed=19, scale=6.0)
    y = torch.zeros(8, dtype=torch.long)
    soft_divergence(s, t, y, 1.0, forward_kl).backward()
    g_full = s.grad.clone()
    s.grad = None
    soft_divergence(s, topk_of(t, 1.0, 64), y, 1.0, forward_kl).backward()
    rel = (s.grad - g_full).norm() / g_full.norm()
    assert float(rel) < 0.05


def test_topk_dataclass_is_plain_tensors():
    c = topk_of(_logits(2, 3, V), 1.0, 4)
    assert isinstance(c, TopK) and c.idx.shape == (2, 3, 4) and c.log_tail.shape == (2, 3)
