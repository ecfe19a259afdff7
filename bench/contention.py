"""Speed on a shared machine, measured in one run (issue 10's targets):

  1. the default job (`kdrun`, fresh store each time) idle vs with one competing CPU-bound
     process (a Python busy loop): target loaded / idle <= 1.3;
  2. a 4-job sweep with `hydra/launcher=joblib hydra.launcher.n_jobs=2` vs the same sweep run
     sequentially (the basic launcher): target parallel / sequential <= 1.0.

    python bench/contention.py                                  # the default job as shipped
    python bench/contention.py --variants "" runtime.num_threads=0 runtime.num_threads=1
    python bench/contention.py --variants repo=/path/to/old/checkout ""   # before vs after
    python bench/contention.py --quick                          # 1 rep, no sweep: checks it runs

Every variant runs idle and loaded alternately (--reps times each), so drifting background
load hits both alike; medians are reported. The jobs get the environment a user has: the
thread variables OMP_NUM_THREADS, MKL_NUM_THREADS, OMP_WAIT_POLICY and GOMP_SPINCOUNT are
removed. The "idle" machine is only as idle as it is: the load average is printed beside every
figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import machine_line  # noqa: E402

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
HOG = "while True: pass"


def user_env(repo: Path = REPO) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONPATH"] = str(repo) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def load() -> float:
    return os.getloadavg()[0]


def run_kdrun(args: list[str], work: Path, tag: str) -> float:
    """Wall seconds of `kdrun ARGS` with its own fresh store and output directory. An
    argument ``repo=PATH`` runs the kdrun of another checkout (e.g. main, for "before")."""
    repo = Path(next((a[5:] for a in args if a.startswith("repo=")), REPO))
    args = [a for a in args if not a.startswith("repo=")]
    out = work / tag.replace("/", "_")
    dirs = [f"store_dir={out / 'store'}"]
    dirs.append(f"hydra.sweep.dir={out}" if "-m" in args else f"hydra.run.dir={out}")
    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "kdrun", *args, *dirs],
        cwd=work,
        env=user_env(repo),
        capture_output=True,
        text=True,
    )
    dt = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"kdrun {' '.join(args)} failed:\n{p.stderr[-2000:]}")
    return dt


def with_hog(fn, *args):
    """Run fn(*args) while one CPU-bound process competes for the cores."""
    hog = subprocess.Popen([sys.executable, "-c", HOG])
    try:
        time.sleep(0.5)  # let it reach full speed
        return fn(*args)
    finally:
        hog.kill()
        hog.wait()


def contention(variants: list[str], reps: int, work: Path) -> None:
    print("\n1. default job idle vs one competing CPU-bound process (target <= 1.3x)")
    print(f"{'variant':<28} {'idle s':>8} {'loaded s':>9} {'ratio':>6}  load avg")
    for v in variants:
        args = v.split()
        idle, loaded, loads = [], [], []
        for r in range(reps):
            loads.append(load())
            idle.append(run_kdrun(args, work, f"{v or 'default'}-idle{r}".replace("=", "_")))
            loads.append(load())
            tag = f"{v or 'default'}-loaded{r}".replace("=", "_")
            loaded.append(with_hog(run_kdrun, args, work, tag))
        i, lo = statistics.median(idle), statistics.median(loaded)
        print(
            f"{v or '(defaults)':<28} {i:8.1f} {lo:9.1f} {lo / i:5.2f}x  "
            f"{min(loads):.1f}-{max(loads):.1f}  idle {idle} loaded {loaded}",
            flush=True,
        )


def sweep(values: str, reps: int, work: Path, variant: str) -> None:
    cmd = " ".join(["kdrun -m", values, *variant.split()])
    print(f"\n2. 4-job sweep `{cmd}`: joblib n_jobs=2 vs sequential (target <= 1.0x)")
    seq, par, loads = [], [], []
    base = ["-m", values, *variant.split()]
    joblib = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    for r in range(reps):
        loads.append(load())
        seq.append(run_kdrun(base, work, f"sweep-seq{r}-{variant}"))
        loads.append(load())
        par.append(run_kdrun([*base, *joblib], work, f"sweep-joblib{r}-{variant}"))
    s, p = statistics.median(seq), statistics.median(par)
    print(
        f"sequential {s:.1f} s, joblib n_jobs=2 {p:.1f} s: {p / s:.2f}x  "
        f"(load avg {min(loads):.1f}-{max(loads):.1f}) seq {seq} joblib {par}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--variants",
        nargs="*",
        default=[""],
        help='override sets to compare ("" = the shipped defaults)',
    )
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--sweep", default="seed=0,1,2,3", help="the 4-job sweep's values")
    ap.add_argument("--sweep-variants", nargs="*", default=[""], help="as --variants")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--quick", action="store_true", help="1 rep, no sweep")
    a = ap.parse_args(argv)
    reps = 1 if a.quick else a.reps
    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory(prefix="kdrun-contention-") as tmp:
        contention(a.variants, reps, Path(tmp))
        if not (a.quick or a.no_sweep):
            for v in a.sweep_variants:
                sweep(a.sweep, reps, Path(tmp), v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
