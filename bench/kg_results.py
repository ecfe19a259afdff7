"""The table of docs/kg.md from finished runs' metrics.json: per seed and mean ± std.

python bench/kg_results.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def _row(m: dict) -> dict:
    ev = m.get("evidence") or {}
    # runs written before the kg task joined report.evidence kept kd_gain_interval
    ci = ev.get("kd_gain_ci") or (None, None)
    gi = m.get("kd_gain_interval") or {"low": ci[0], "high": ci[1]}
    return {
        "seed": m["seed"],
        "method": m["method"],
        "teacher": m["teacher"]["test_mrr"],
        "baseline": m["baseline"]["test_mrr"],
        "student": m["student"]["test_mrr"],
        "b_hits": [m["baseline"][f"test_hits_at_{k}"] for k in (1, 3, 10)],
        "s_hits": [m["student"][f"test_hits_at_{k}"] for k in (1, 3, 10)],
        "gain": m["kd_gain"],
        "ci": (gi.get("low"), gi.get("high")),
        "seconds": {s: m[s]["train_seconds"] for s in ("teacher", "baseline", "student")},
    }


def main(dirs: list[str]) -> None:
    rows = [_row(json.loads((Path(d) / "metrics.json").read_text())) for d in dirs]
    print(
        "| method | seed | teacher MRR | baseline MRR | distilled MRR | gain [95% CI] |"
        " baseline H@1/3/10 | distilled H@1/3/10 | train s (T/B/S) |"
    )
    print("|---|---:|---:|---:|---:|---|---|---|---|")
    for r in rows:
        hb = "/".join(f"{100 * h:.1f}" for h in r["b_hits"])
        hs = "/".join(f"{100 * h:.1f}" for h in r["s_hits"])
        t = "/".join(f"{r['seconds'][s]:.0f}" for s in ("teacher", "baseline", "student"))
        lo, hi = r["ci"]
        print(
            f"| {r['method']} | {r['seed']} | {r['teacher']:.4f} | {r['baseline']:.4f} | "
            f"{r['student']:.4f} | {r['gain']:+.4f} [{lo:+.4f}, {hi:+.4f}] | {hb} | {hs} | {t} |"
        )
    for method in sorted({r["method"] for r in rows}):
        rs = [r for r in rows if r["method"] == method]
        if len(rs) < 2:
            continue

        def ms(k: str, rs=rs) -> str:
            v = [r[k] for r in rs]
            return f"{statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}"

        print(
            f"| {method} | mean ± std ({len(rs)}) | {ms('teacher')} | {ms('baseline')} | "
            f"{ms('student')} | {ms('gain')} | | | |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
