"""The uncertainty of a comparison: is a gain larger than the noise of the test set and seed?

Pure Python and numpy (scipy is not a kdrun dependency): exact binomial tails from integer
binomial coefficients, intervals by bootstrap with a fixed seed, so every number here is the
same on every machine and every rerun.

- ``mcnemar``: two models scored on the same test images. Only the discordant images carry
  information about which is better; under "equally good" each one falls either way with
  probability 1/2, so the exact two-sided binomial test on them is McNemar's test without its
  normal approximation (McNemar 1947, Psychometrika 12:153; the exact conditional form is what
  Fagerland, Lydersen & Laake 2013, BMC Med Res Methodol 13:91, recommend for small counts).
- ``paired_bootstrap``: a percentile interval for the mean of paired differences, resampling
  the test items with replacement (Efron & Tibshirani 1993, An Introduction to the Bootstrap,
  ch. 13).
- ``sign_flip_p``: a paired randomization test for continuous differences (LM windows):
  under "no difference" each paired difference is as likely to have either sign (Fisher 1935,
  The Design of Experiments, sec. 21).
- ``wilson``: a binomial interval for an accuracy on a small subset (Wilson 1927, JASA 22:209;
  recommended over the Wald interval by Brown, Cai & DasGupta 2001, Stat Sci 16:101).
- ``t_interval``: mean and Student-t interval over seeds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

ALPHA = 0.05  # the level of every interval (95%) and of the verdict
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed: the interval of a run is the same on every rerun
_Z975 = 1.959963984540054  # the standard normal's 97.5% quantile

# Student-t 97.5% quantiles for 1..30 degrees of freedom (any statistics table, e.g.
# Abramowitz & Stegun 1964, table 26.10); above 30 the Cornish-Fisher series below.
_T975 = tuple(
    float(q)
    for q in (
        "12.7062 4.3027 3.1824 2.7764 2.5706 2.4469 2.3646 2.3060 2.2622 2.2281 "
        "2.2010 2.1788 2.1604 2.1448 2.1314 2.1199 2.1098 2.1009 2.0930 2.0860 "
        "2.0796 2.0739 2.0687 2.0639 2.0595 2.0555 2.0518 2.0484 2.0452 2.0423 "
    ).split()
)


def binomial_two_sided_p(k: int, n: int) -> float:
    """Exact two-sided p of ``k`` successes in ``n`` fair coin flips: twice the smaller
    tail, capped at 1 (the symmetric case of the binomial test). Integer arithmetic: exact
    for any n (the quotient of two big integers is rounded once)."""
    if n <= 0:
        return 1.0
    k = min(k, n - k)
    tail, coef = 0, 1
    for i in range(k + 1):
        tail += coef
        coef = coef * (n - i) // (i + 1)
    return min(1.0, 2 * tail / 2**n)


def mcnemar(base_right: Any, other_right: Any) -> dict[str, Any]:
    """McNemar's exact test of two models' per-item correctness (booleans, same items in the
    same order). ``discordant`` = [b, c]: b items only ``base`` got right, c only ``other``."""
    a, o = _bools(base_right), _bools(other_right)
    if a.shape != o.shape:
        raise ValueError(f"paired outcomes differ in length: {a.shape[0]} vs {o.shape[0]}")
    b, c = int((a & ~o).sum()), int((~a & o).sum())
    return {"n": int(a.size), "discordant": [b, c], "p": binomial_two_sided_p(min(b, c), b + c)}


def _bools(x: Any) -> np.ndarray:
    arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return arr.astype(bool).reshape(-1)


def paired_bootstrap(
    diffs: Any, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """95% percentile interval for the mean of ``diffs`` (one paired difference per item).
    A mean of resampled items only depends on how often each distinct value is drawn, so
    differences with few distinct values (correctness: -1, 0, +1) are resampled as
    multinomial counts: the same distribution, O(resamples) instead of O(resamples × n)."""
    d = np.asarray(diffs, dtype=np.float64).reshape(-1)
    n = d.size
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    values, counts = np.unique(d, return_counts=True)
    if values.size <= 64:
        draws = rng.multinomial(n, counts / n, size=resamples)
        means = draws @ values / n
    else:
        means = np.empty(resamples)
        step = max(1, 2**22 // n)  # bounded memory: at most ~4M indices at a time
        for i in range(0, resamples, step):
            k = min(step, resamples - i)
            means[i : i + k] = d[rng.integers(0, n, size=(k, n))].mean(1)
    lo, hi = np.quantile(means, [ALPHA / 2, 1 - ALPHA / 2])
    return (float(lo), float(hi))


def sign_flip_p(
    diffs: Any, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> float:
    """Two-sided p of the paired randomization test: how often a random sign per difference
    gives a mean at least as far from 0 as the observed one ((count + 1) / (resamples + 1):
    a Monte Carlo p is never 0)."""
    d = np.asarray(diffs, dtype=np.float64).reshape(-1)
    if d.size == 0 or not np.any(d):
        return 1.0
    rng = np.random.default_rng(seed)
    observed = abs(d.mean()) * (1 - 1e-12)  # ties with the observed mean count as extreme
    hits = 0
    step = max(1, 2**22 // d.size)
    for i in range(0, resamples, step):
        k = min(step, resamples - i)
        signs = rng.integers(0, 2, size=(k, d.size)) * 2 - 1
        hits += int((np.abs((signs * d).mean(1)) >= observed).sum())
    return (hits + 1) / (resamples + 1)


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval for a proportion k/n ((nan, nan) for n = 0)."""
    if n <= 0:
        return (math.nan, math.nan)
    z2, p = _Z975**2, k / n
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z975 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def t_quantile(df: int) -> float:
    """Student-t 97.5% quantile with ``df`` degrees of freedom."""
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    # Cornish-Fisher expansion (Abramowitz & Stegun 26.7.5): error < 1e-5 for df > 30
    z, v = _Z975, float(df)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
    )


def t_interval(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std and the 95% t-interval of the mean over ``values`` (e.g. seeds);
    std and interval are None below two values."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"n": 0, "mean": None, "std": None, "ci": None}
    mean = statistics.fmean(vals)
    if len(vals) < 2:
        return {"n": 1, "mean": mean, "std": None, "ci": None}
    sd = statistics.stdev(vals)
    half = t_quantile(len(vals) - 1) * sd / math.sqrt(len(vals))
    return {"n": len(vals), "mean": mean, "std": sd, "ci": [mean - half, mean + half]}


def verdict(gain: float, p: float, tie: bool = False) -> str:
    """'tie' (no difference at all), 'KD helps' / 'KD hurts' (p < 0.05), else 'within noise'."""
    if tie:
        return "tie"
    if p < ALPHA:
        return "KD helps" if gain > 0 else "KD hurts"
    return "within noise"


# ---- the evidence object of metrics.json --------------------------------------------
def classification_evidence(base_right: Any, student_right: Any) -> dict[str, Any]:
    """kd_gain (student − baseline accuracy) with its paired bootstrap interval and the
    exact McNemar p, from per-test-image correctness."""
    test = mcnemar(base_right, student_right)
    b, c = test["discordant"]
    n = test["n"]
    diffs = _bools(student_right).astype(np.int8) - _bools(base_right).astype(np.int8)
    lo, hi = paired_bootstrap(diffs)
    gain = (c - b) / n if n else math.nan
    return {
        "test": "mcnemar-exact",
        "n": n,
        "discordant": [b, c],
        "kd_gain": gain,
        "kd_gain_ci": [lo, hi],
        "kd_gain_p": test["p"],
        "ci_method": f"paired bootstrap, {BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}",
        "verdict": verdict(gain, test["p"], tie=b == c),
    }


def _paired_items(diffs: np.ndarray, test: str) -> dict[str, Any]:
    """Evidence from one paired difference per test item (positive: KD helped): bootstrap
    interval of the mean and a sign-flip p."""
    lo, hi = paired_bootstrap(diffs)
    p = sign_flip_p(diffs)
    gain = float(diffs.mean()) if diffs.size else math.nan
    return {
        "test": test,
        "n": int(diffs.size),
        "kd_gain": gain,
        "kd_gain_ci": [lo, hi],
        "kd_gain_p": p,
        "ci_method": f"paired bootstrap, {BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}",
        "verdict": verdict(gain, p, tie=not np.any(diffs)),
    }


def _pair(a: Any, b: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"paired {what} differ in number: {x.size} vs {y.size}")
    return x, y


def lm_evidence(base_bpb: Any, student_bpb: Any) -> dict[str, Any]:
    """kd_gain in bits per byte (baseline − student: positive when KD helps), paired over
    test windows: bootstrap interval of the mean per-window gain and a sign-flip p. Windows
    may overlap (dataset.stride), which makes both somewhat optimistic."""
    bb, sb = _pair(base_bpb, student_bpb, "windows")
    return _paired_items(bb - sb, "sign-flip-windows")


def score_evidence(base_scores: Any, student_scores: Any) -> dict[str, Any]:
    """kd_gain in a per-item score where higher is better (a knowledge graph's test triples'
    reciprocal ranks: their mean is the MRR), paired over items, as for language-model
    windows."""
    bs, ss = _pair(base_scores, student_scores, "items")
    return _paired_items(ss - bs, "sign-flip-items")


def seeds_evidence(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """``b`` − ``a`` paired by seed (e.g. nets that share initial weights): the mean
    difference, its 95% t-interval over seeds and the verdict (the interval excludes 0)."""
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    t = t_interval(diffs)
    ci = t["ci"]
    if ci is None:
        word = "one seed: no interval"
    elif not any(diffs):
        word = "tie"
    else:
        word = "better" if ci[0] > 0 else ("worse" if ci[1] < 0 else "within noise")
    return {
        "test": "paired-t-interval",
        "n": t["n"],
        "diff": t["mean"],
        "diff_std": t["std"],
        "diff_ci": ci,
        "verdict": word,
    }


def paired_evidence(outcomes: str, baseline: Any, student: Any) -> dict[str, Any]:
    """metrics.json's ``evidence`` from two models' per-item test outcomes of one kind (a
    task's ``outcomes``): "correct" (right/wrong per image: McNemar), "windows" (each test
    window's share of the test bits per byte: paired over windows) or "scores" (a per-item
    score, higher is better: paired over items)."""
    if outcomes == "correct":
        return classification_evidence(baseline, student)
    if outcomes == "windows":
        return lm_evidence(_floats(baseline), _floats(student))
    if outcomes == "scores":
        return score_evidence(_floats(baseline), _floats(student))
    raise ValueError(f"no paired test for outcomes '{outcomes}' (known: correct, windows, scores)")


def _floats(x: Any) -> np.ndarray:
    arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return arr.astype(np.float64).reshape(-1)


def fmt_p(p: float) -> str:
    """'p = 0.29', 'p = 0.021', 'p < 0.0001'."""
    if not isinstance(p, (int, float)) or not math.isfinite(p):
        return "p = -"
    if p < 1e-4:
        return "p < 0.0001"
    return f"p = {p:.2g}" if p < 0.1 else f"p = {p:.2f}"


def evidence_text(ev: dict[str, Any]) -> str:
    """'+0.84 points, 95% CI [-0.56, +2.22], p = 0.29 (McNemar exact; 4 vs 7 discordant of
    360): within noise' ('+0.0123 bpb, ...' for language modelling)."""
    lo, hi = ev["kd_gain_ci"]
    if ev["test"] == "mcnemar-exact":
        g, lo, hi, unit, d = 100 * ev["kd_gain"], 100 * lo, 100 * hi, " points", 2
        b, c = ev["discordant"]
        how = f"McNemar exact; {b} vs {c} discordant of {ev['n']}"
    else:
        g, unit, d = ev["kd_gain"], " bpb", 4
        how = f"paired over {ev['n']} test windows"
    if ev["verdict"] == "tie":
        tie = "no image differs" if ev["test"] == "mcnemar-exact" else "no window differs"
        if ev["test"] == "mcnemar-exact" and ev["discordant"][0]:
            tie = f"{ev['discordant'][0]} images each way"
        return f"{g:+.{d}f}{unit} ({tie}): a tie"
    return (
        f"{g:+.{d}f}{unit}, 95% CI [{lo:+.{d}f}, {hi:+.{d}f}], {fmt_p(ev['kd_gain_p'])} "
        f"({how}): {ev['verdict']}"
    )
