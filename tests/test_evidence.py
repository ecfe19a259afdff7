"""kdrun.report.evidence: exact McNemar, bootstrap and binomial intervals, t-intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kdrun.report import evidence as ev


def _pair(both: int, only_base: int, only_student: int, neither: int):
    """Per-item correctness of a baseline and a student with the given cell counts."""
    base = [1] * both + [1] * only_base + [0] * only_student + [0] * neither
    student = [1] * both + [0] * only_base + [1] * only_student + [0] * neither
    return np.array(base, bool), np.array(student, bool)


def test_mcnemar_exact_textbook_values():
    # b=1, c=9: 2 * (C(10,0) + C(10,1)) / 2^10 = 22/1024 = 0.021484375
    base, student = _pair(300, 1, 9, 50)
    t = ev.mcnemar(base, student)
    assert t["discordant"] == [1, 9] and t["n"] == 360
    assert t["p"] == pytest.approx(22 / 1024, rel=1e-12)
    # b=0, c=5: 2 / 32; b=2, c=12: 2 * (1 + 14 + 91) / 2^14
    assert ev.binomial_two_sided_p(0, 5) == pytest.approx(1 / 16)
    assert ev.binomial_two_sided_p(2, 14) == pytest.approx(212 / 16384)
    assert ev.binomial_two_sided_p(12, 14) == ev.binomial_two_sided_p(2, 14)  # symmetric


def test_mcnemar_equal_discordant_counts_give_p_one():
    for b in (0, 1, 7):
        assert ev.mcnemar(*_pair(100, b, b, 3))["p"] == 1.0


def test_binomial_tail_is_exact_for_large_counts():
    # 10,000 discordant images split 5,100 / 4,900: the normal approximation with
    # continuity correction gives 0.0469 (z = 199/50); the exact tail agrees to 3 digits
    p = ev.binomial_two_sided_p(4900, 10_000)
    assert 0.045 < p < 0.049
    assert ev.binomial_two_sided_p(0, 1000) == 2.0**-999  # big integers: no overflow


def test_evidence_of_a_tie_is_reported_as_a_tie():
    base, student = _pair(340, 4, 4, 12)
    e = ev.classification_evidence(base, student)
    assert e["kd_gain"] == 0 and e["kd_gain_p"] == 1.0 and e["verdict"] == "tie"
    assert "a tie" in ev.evidence_text(e) and "4 images each way" in ev.evidence_text(e)
    same = ev.classification_evidence(base, base)
    assert same["verdict"] == "tie" and same["kd_gain_ci"] == [0.0, 0.0]
    assert "no image differs" in ev.evidence_text(same)


def test_evidence_verdicts_and_text():
    helps = ev.classification_evidence(*_pair(300, 1, 9, 50))
    assert helps["verdict"] == "KD helps" and helps["kd_gain"] == pytest.approx(8 / 360)
    hurts = ev.classification_evidence(*_pair(300, 9, 1, 50))
    assert hurts["verdict"] == "KD hurts"
    noise = ev.classification_evidence(*_pair(300, 4, 7, 49))
    assert noise["verdict"] == "within noise" and noise["kd_gain_p"] > 0.05
    text = ev.evidence_text(noise)
    assert text.startswith("+0.83 points, 95% CI [") and "within noise" in text
    assert "4 vs 7 discordant of 360" in text


def test_bootstrap_interval_contains_the_difference_and_is_reproducible():
    base, student = _pair(300, 4, 7, 49)
    diffs = student.astype(int) - base.astype(int)
    lo, hi = ev.paired_bootstrap(diffs)
    assert lo < diffs.mean() < hi
    assert (lo, hi) == ev.paired_bootstrap(diffs)  # fixed seed
    # the multinomial shortcut and plain resampling draw the same distribution: a
    # continuous copy (forces the resampling branch) gives nearly the same interval
    jitter = diffs + np.random.default_rng(0).normal(0, 1e-9, diffs.size)
    lo2, hi2 = ev.paired_bootstrap(jitter)
    assert lo2 == pytest.approx(lo, abs=0.004) and hi2 == pytest.approx(hi, abs=0.004)
    assert (lo2, hi2) == ev.paired_bootstrap(jitter)
    assert (lo2, hi2) != ev.paired_bootstrap(jitter, seed=1)  # the seed is what fixes it


def test_lm_evidence_pairs_windows():
    rng = np.random.default_rng(0)
    base = 2.0 + rng.normal(0, 0.05, 200)
    better = base - 0.02 + rng.normal(0, 0.01, 200)
    e = ev.lm_evidence(base, better)
    assert e["kd_gain"] == pytest.approx(0.02, abs=0.003)
    assert e["kd_gain_ci"][0] < e["kd_gain"] < e["kd_gain_ci"][1]
    assert e["kd_gain_p"] < 0.001 and e["verdict"] == "KD helps"
    noise = ev.lm_evidence(base, base + rng.normal(0, 0.01, 200))
    assert noise["kd_gain_p"] > 0.05 and noise["verdict"] == "within noise"
    assert ev.lm_evidence(base, base)["verdict"] == "tie"
    assert " bpb, 95% CI [" in ev.evidence_text(e)


def test_wilson_interval():
    # Wilson (1927) for 0 of 10: [0, 0.2775]; 10 of 10: [0.7225, 1]; 37 of 37 test 3s
    assert ev.wilson(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    assert ev.wilson(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-4)
    lo, hi = ev.wilson(30, 37)
    assert lo < 30 / 37 < hi and hi - lo < 0.3
    assert all(math.isnan(v) for v in ev.wilson(0, 0))


def test_t_interval_over_seeds():
    r = ev.t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(2) = 4.3027
    assert r["mean"] == 2.0 and r["std"] == 1.0
    assert r["ci"] == pytest.approx([2 - 4.3027 / math.sqrt(3), 2 + 4.3027 / math.sqrt(3)])
    assert ev.t_interval([5.0])["ci"] is None and ev.t_interval([])["mean"] is None


def test_quantiles_match_scipy_where_installed():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 4, 9, 30, 31, 45, 200, 10_000):
        assert ev.t_quantile(df) == pytest.approx(stats.t.ppf(0.975, df), rel=2e-4)
    for k, n in ((1, 10), (3, 40), (250, 520), (4900, 10_000)):
        exact = stats.binomtest(k, n, 0.5).pvalue
        assert ev.binomial_two_sided_p(k, n) == pytest.approx(exact, rel=1e-9)


# ---- the tasks' per-item outcomes: what the pipeline pairs --------------------------
class _Bigram(__import__("torch").nn.Module):
    """A next-token model whose logits are a table row per input token."""

    def __init__(self, vocab: int, seed: int):
        import torch

        super().__init__()
        self.vocab_size = vocab
        self.table = torch.nn.Embedding(vocab, vocab)
        torch.nn.init.normal_(self.table.weight, generator=torch.Generator().manual_seed(seed))

    def forward(self, x):
        return self.table(x)


def test_lm_outcomes_average_to_the_test_bpb_and_pair_windows():
    from types import SimpleNamespace

    import torch

    from kdrun.tasks.lm import LM

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 11, (40, 9), generator=g)
    y = torch.randint(0, 11, (40, 9), generator=g)
    data = SimpleNamespace(x_test=x, y_test=y, bytes_per_token={"test": 1.7})
    a, b = _Bigram(11, 0), _Bigram(11, 1)
    out_a = LM.test_outcomes(a, data, 8, "off")
    assert out_a.shape == (40,)
    assert float(out_a.mean()) == pytest.approx(LM.test_metrics(a, data, 8, "off")["test_bpb"])
    e = ev.paired_evidence(LM.outcomes, out_a, LM.test_outcomes(b, data, 8, "off"))
    gain = (
        LM.test_metrics(a, data, 8, "off")["test_bpb"]
        - LM.test_metrics(b, data, 8, "off")["test_bpb"]
    )
    assert e["kd_gain"] == pytest.approx(gain, rel=1e-5) and e["n"] == 40  # float32 sums


def test_lm_split_loss_and_agreement_count_only_scored_tokens():
    """Windows with IGNOREd targets (a prompt): the loss is the mean over the scored tokens
    and the batch size does not change it; agreement compares scored positions only."""
    import torch
    import torch.nn.functional as F

    from kdrun.methods.lm_losses import IGNORE
    from kdrun.tasks.lm import LM, split_loss

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 11, (12, 7), generator=g)
    y = torch.randint(0, 11, (12, 7), generator=g)
    y[:5, :4] = IGNORE  # uneven across batches: a per-batch mean weighted by all tokens differs
    model = _Bigram(11, 0)
    logits = model(x)
    keep = y != IGNORE
    expected = float(F.cross_entropy(logits[keep], y[keep]))  # the formula, over scored tokens
    for bs in (2, 5, 12):
        assert split_loss(model, x, y, bs, "off") == pytest.approx(expected, rel=1e-5)
    ref = LM.teacher_reference(model, _lm_data(x, y), 4, "off")
    got = LM.compare(model, _lm_data(x, y), ref, 5, "off")
    assert got["agreement"] == pytest.approx(1.0)
    assert got["kl_to_teacher"] == pytest.approx(0.0, abs=1e-4)  # the top-K floor's rounding
    other = _Bigram(11, 1)
    hits = (other(x).argmax(-1) == logits.argmax(-1))[keep].float().mean()
    assert LM.compare(other, _lm_data(x, y), ref, 5, "off")["agreement"] == pytest.approx(
        float(hits)
    )


def _lm_data(x, y):
    from types import SimpleNamespace

    return SimpleNamespace(x_test=x, y_test=y, num_classes=11, bytes_per_token={"test": 1.0})


def test_classification_outcomes_give_the_accuracy_difference():
    from types import SimpleNamespace

    import torch

    from kdrun.tasks.classify import CLASSIFY

    g = torch.Generator().manual_seed(0)
    data = SimpleNamespace(x_test=torch.randn(300, 5, generator=g), y_test=torch.arange(300) % 3)
    torch.manual_seed(0)
    a, b = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    ra, rb = (CLASSIFY.test_outcomes(m, data, 64, "off") for m in (a, b))
    acc = [CLASSIFY.test_metrics(m, data, 64, "off")["test_acc"] for m in (a, b)]
    assert float(ra.float().mean()) == pytest.approx(acc[0])
    e = ev.paired_evidence(CLASSIFY.outcomes, ra, rb)
    assert e["kd_gain"] == pytest.approx(acc[1] - acc[0])
    assert e["discordant"] == [int((ra & ~rb).sum()), int((~ra & rb).sum())]


def test_paired_evidence_names_the_kinds_it_knows():
    with pytest.raises(ValueError, match="known: correct, windows"):
        ev.paired_evidence("ranks", [1], [1])


def test_seeds_evidence_for_paired_evaluation_nets():
    from kdrun.condense.anchors import synthetic_vs_real

    real, syn = [0.58, 0.55, 0.62, 0.60, 0.57], [0.71, 0.70, 0.72, 0.71, 0.70]
    e = ev.seeds_evidence(real, syn)
    diffs = [b - a for a, b in zip(real, syn, strict=True)]
    assert e["diff"] == pytest.approx(sum(diffs) / 5) and e["n"] == 5
    assert e["diff_ci"] == pytest.approx(ev.t_interval(diffs)["ci"])
    assert e["verdict"] == "better"
    assert synthetic_vs_real(e).startswith("synthetic − random real: +12.40 points, 95% CI [")
    close = ev.seeds_evidence([0.85, 0.86, 0.84], [0.86, 0.84, 0.86])
    assert close["verdict"] == "within noise"
    assert ev.seeds_evidence([0.8, 0.8], [0.8, 0.8])["verdict"] == "tie"
