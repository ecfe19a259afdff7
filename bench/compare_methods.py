"""Compare distillation methods on one Fashion-MNIST teacher/student pair, over seeds.

Runs ``kdrun`` once per (method, seed) with one shared store (each teacher and baseline is
trained once per seed and reused), then prints a markdown table: the distilled student's
test accuracy and its gain over the from-scratch baseline (same init, same recipe), as
mean ± std over seeds, and the training time each method adds per run (its student plus
any model it trains besides: ensemble members, assistant, generations; not the shared
teacher and baseline).

    OMP_NUM_THREADS=1 python bench/compare_methods.py                 # every method
    python bench/compare_methods.py --methods kd dml --seeds 0 1 2 --jobs 2

Timings depend on the machine and on what else runs on it; accuracies do not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import machine_line  # noqa: E402

# A CPU-sized recipe (minutes per run on one core): the teacher, a small CNN, learns from
# 9,000 training images (+1,000 for validation); the student, an MLP, from a fixed 10% of
# them (900 images: the small-transfer-set regime where soft targets carry the most); every
# model is tested on the full 10,000-image test set.
RECIPE = [
    "dataset=fashion_mnist",
    "dataset.limit_train=10000",
    "dataset.val_size=1000",
    "dataset.train_fraction=0.1",
    "teacher=cnn",
    "teacher.channels=[16,32]",
    "teacher.train.epochs=6",
    "student=mlp",
    "student.hidden=[256]",
    "student.train.epochs=100",
    "runtime.progress=off",
    "runtime.num_threads=1",
]


def registered_methods() -> list[str]:
    sys.path.insert(0, str(REPO))
    from kdrun.methods import METHODS

    return sorted(METHODS)


def run_one(method: str, seed: int, out: Path, store: Path, extra: list[str]) -> dict[str, Any]:
    run_dir = out / method / f"seed{seed}"
    cmd = [
        sys.executable,
        "-m",
        "kdrun",
        *RECIPE,
        *extra,
        f"method={method}",
        f"seed={seed}",
        f"store_dir={store}",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    try:
        m = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        m = {"status": "failed", "error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    m["bench_wall_seconds"] = wall
    status = m.get("status")
    acc = m.get("student", {}).get("test_acc") if status == "completed" else None
    print(
        f"  {method:<14} seed {seed}: {status}"
        + (f", student {100 * acc:.2f}%" if acc is not None else f" ({m.get('error')})")
        + f" [{wall:.0f}s]",
        flush=True,
    )
    return m


def mean_std(xs: list[float], scale: float = 100.0, signed: bool = False) -> str:
    if not xs:
        return "-"
    mu = scale * statistics.fmean(xs)
    sd = scale * statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{mu:+.2f} ± {sd:.2f}" if signed else f"{mu:.2f} ± {sd:.2f}"


def method_seconds(m: dict[str, Any]) -> float:
    extra = m.get("extra_models") or {}
    return m["student"]["train_seconds"] + sum(r.get("train_seconds", 0.0) for r in extra.values())


def knobs(m: dict[str, Any]) -> str:
    """The T/alpha a method used (metrics.json ``effective``), e.g. ' (T=3)'."""
    eff = m.get("effective") or {}
    out = []
    if eff.get("T") is not None:
        out.append(f"T={eff['T']:g}")
    elif eff.get("T_learned") is not None:
        out.append(f"T learned {eff['T_learned']:.2g}")
    if eff.get("alpha") is not None:
        out.append(f"alpha={eff['alpha']:g}")
    return f" ({', '.join(out)})" if out else ""


def table(methods: list[str], results: dict[tuple[str, int], dict[str, Any]], seeds) -> str:
    lines = [
        "| method | student test acc (%) | gain vs baseline (points) | method train time (s/run) |",
        "|---|---|---|---|",
    ]
    for method in methods:
        runs = [results[(method, s)] for s in seeds]
        ok = [m for m in runs if m.get("status") == "completed"]
        if len(ok) < len(runs):
            bad = next(m for m in runs if m.get("status") != "completed")
            lines.append(f"| {method} | failed: {bad.get('error', '?')} | | |")
            continue
        accs = [m["student"]["test_acc"] for m in ok]
        gains = [m["kd_gain"] for m in ok if m.get("kd_gain") is not None]
        secs = statistics.fmean(method_seconds(m) for m in ok)
        lines.append(
            f"| {method}{knobs(ok[0])} | {mean_std(accs)} | {mean_std(gains, signed=True)} | "
            f"{secs:.1f} |"
        )
    done = [m for m in results.values() if m.get("status") == "completed"]
    by_seed: dict[int, dict[str, Any]] = {}
    for m in done:
        by_seed.setdefault(m["seed"], m)
    base = [m["baseline"]["test_acc"] for m in by_seed.values() if m.get("baseline")]
    teach = [m["teacher"]["test_acc"] for m in by_seed.values() if m.get("teacher")]
    lines.append("")
    lines.append(
        f"Teacher {mean_std(teach)} %, student from scratch (baseline) "
        f"{mean_std(base)} %, over seeds {', '.join(map(str, seeds))}."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=None, help="default: every registered one")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (1 thread each)")
    ap.add_argument("--out", type=Path, default=None, help="default: /tmp/kdrun-compare-<time>")
    ap.add_argument("--store", type=Path, default=None, help="default: <out>/store")
    ap.add_argument("overrides", nargs="*", help="extra kdrun overrides for every run")
    args = ap.parse_args(argv)
    methods = args.methods or registered_methods()
    out = args.out or Path(f"/tmp/kdrun-compare-{time.strftime('%Y%m%d-%H%M%S')}")
    store = args.store or out / "store"
    print(machine_line(), flush=True)
    print(f"kdrun {' '.join(RECIPE + args.overrides)} method=<m> seed=<s> ({out})", flush=True)
    # kd first: it trains each seed's teacher and baseline, which every other run reuses.
    order = [(m, s) for m in (["kd"] if "kd" in methods else []) for s in args.seeds]
    order += [(m, s) for m in methods if m != "kd" for s in args.seeds]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {key: pool.submit(run_one, *key, out, store, args.overrides) for key in order}
        results = {key: f.result() for key, f in futures.items()}
    print(f"\ntotal wall time {time.perf_counter() - t0:.0f}s with --jobs {args.jobs}\n")
    print(table(methods, results, args.seeds))
    return 0 if all(m.get("status") == "completed" for m in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
