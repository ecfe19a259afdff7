"""A paired bootstrap interval on the mean difference of two models' per-item scores.

Both models are scored on the same test items (e.g. a knowledge graph's test triples'
reciprocal ranks), so the items are resampled together: the interval is on the gain
``mean(b - a)`` and carries the correlation between the two (a percentile interval).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], n_boot: int = 10_000, level: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Mean of ``b - a`` and its percentile interval over ``n_boot`` resamples of the items."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError(f"paired scores must be two equal, non-empty lists ({x.shape}, {y.shape})")
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"level must be in (0, 1) and n_boot >= 1 (got {level}, {n_boot})")
    d = y - x
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for i in range(0, n_boot, 1000):  # blocks: bounded memory for large test sets
        k = min(1000, n_boot - i)
        means[i : i + k] = d[rng.integers(0, len(d), size=(k, len(d)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {
        "mean": float(d.mean()),
        "low": float(lo),
        "high": float(hi),
        "level": level,
        "n": len(d),
        "n_boot": n_boot,
    }
