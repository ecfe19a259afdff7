"""LM distillers: cache vs online teacher, on-policy rows, sequence-level KD."""

from __future__ import annotations

import torch

from kdrun.methods.lm import (
    JSD,
    LM_METHODS,
    LMKD,
    JSDOptions,
    LMHardLabels,
    ReverseKL,
    SeqKD,
    TokenKDOptions,
    on_policy_rows,
    teacher_samples,
)
from kdrun.methods.lm_losses import IGNORE, TopK, token_ce
from kdrun.models.gpt import GPT, GPTShape

V, L = 40, 12


def _gpt(seed: int, layers: int = 1) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTShape(V, L, layers, 2, 16))


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(0, V, (4, L + 1), generator=g)
    return w[:, :-1], w[:, 1:], torch.arange(4)


def test_registry_names():
    assert {"kd", "reverse_kl", "jsd", "seqkd"} <= set(LM_METHODS)
    assert LM_METHODS["kd"] is LMKD and LM_METHODS["reverse_kl"] is ReverseKL


def test_hard_labels_is_token_cross_entropy():
    m = _gpt(0)
    x, y, idx = _batch()
    logits, parts = LMHardLabels(m)(x, y, idx, None)
    torch.testing.assert_close(parts["hard"], token_ce(m(x), y))


def test_cache_with_full_k_gives_the_online_loss_and_packs_small():
    x, y, idx = _batch()
    for cls in (LMKD, ReverseKL, JSD):
        opts = (JSDOptions if cls is JSD else TokenKDOptions)(cache_top_k=V)
        d = cls(_gpt(0), _gpt(1, 2), 2.0, 0.7, opts)
        packed = d.teacher_outputs(x)
        assert packed["idx"].dtype == torch.uint8 and packed["logp"].dtype == torch.float16
        _, online = d(x, y, idx, None)
        _, cached = d(x, y, idx, packed)
        for k in online:  # fp16 storage of the log-probs: agreement to ~1e-3
            torch.testing.assert_close(cached[k], online[k], rtol=2e-3, atol=2e-3)
    assert d.teacher_output_spec() == {
        "outputs": "topk_logprobs",
        "T": 2.0,
        "top_k": V,
        "standardize": False,
    }


def test_cached_outputs_are_topk_at_the_run_temperature():
    d = LMKD(_gpt(0), _gpt(1), 3.0, 0.5, TokenKDOptions(cache_top_k=5))
    x, _, _ = _batch()
    c = TopK.unpack(d.teacher_outputs(x))
    want = (d.teacher(x) / 3.0).log_softmax(-1).topk(5, -1).values
    torch.testing.assert_close(c.logp, want, rtol=2e-3, atol=2e-3)


def test_on_policy_rows_are_the_students_own_continuations():
    x, y, _ = _batch()
    opts = JSDOptions(student_data_fraction=0.5, prompt_tokens=4)
    torch.manual_seed(0)
    x2, y2 = on_policy_rows(_gpt(0), x, y, 2, opts)
    assert torch.equal(x2[2:], x[2:]) and torch.equal(y2[2:], y[2:].long())  # data rows kept
    assert torch.equal(x2[:2, :4], x[:2, :4])  # the prompt is real
    assert (y2[:2, :3] == IGNORE).all() and (y2[:2, 3:] != IGNORE).all()
    assert torch.equal(y2[:2, 3:-1], x2[:2, 4:])  # targets are the next generated tokens
    d = JSD(_gpt(0), _gpt(1), 1.0, 1.0, opts)
    assert not d.cacheable
    _, parts = d(x, y, torch.arange(4), None)
    assert torch.isfinite(parts["soft"])


def test_seqkd_trains_on_teacher_samples_addressed_by_index():
    teacher = _gpt(1)
    x, y, idx = _batch()
    opts = SeqKD.Options(prompt_tokens=3, temperature=1.0, top_p=0.9)
    s = teacher_samples(teacher, torch.cat([x, y[:, -1:]], 1), opts, batch_size=3, seed=0)
    again = teacher_samples(teacher, torch.cat([x, y[:, -1:]], 1), opts, batch_size=3, seed=0)
    assert s.shape == (4, L + 1) and torch.equal(s, again)
    assert torch.equal(s[:, :3], x[:, :3].to(torch.int32))
    student = _gpt(0)
    d = SeqKD(student, teacher, 0.6, s, torch.arange(4), 3)
    _, parts = d(x, y, idx, None)
    ys = s[:, 1:].long().clone()
    ys[:, :2] = IGNORE
    torch.testing.assert_close(parts["soft"], 0.6 * token_ce(student(s[:, :-1]), ys))
    torch.testing.assert_close(parts["hard"], 0.4 * token_ce(student(x), y))
