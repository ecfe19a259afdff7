"""Does a sweep cost about one teacher + one baseline + N distilled students? (issue #3)

Usage: python bench/sweep_overhead.py [--repeats 3] [--overrides experiment=smoke]
                                      [--T 1,4] [--alpha 0.5,0.9]

Reference R, the least kdrun can do for the same trainings, measured in this run:
  - one single-job CLI run `kdrun <overrides>` with a fresh store: process start-up, data
    loading, one teacher, one baseline and one distilled student, metrics and checkpoints;
  - N - 1 more distilled-student trainings through the library (Pipeline.distill, the teacher
    loaded from that store), timed in this process.
Sweep S: `kdrun -m <overrides> T=.. alpha=..` (N jobs) with a fresh store, through the CLI,
including its summary files and plots. Prints S / R per repeat and the median; the issue
asks for S / R <= 1.25. Exits non-zero if the sweep trained the teacher more than once.
Both sides run with one thread (OMP_NUM_THREADS=1, runtime.num_threads=1). Wall times on a
shared machine are noisy: compare the ratio, not the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cli(args: list[str], cwd: Path) -> float:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "kdrun", *args], cwd=cwd, env=env,
                       capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"kdrun {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return wall


def student_seconds(overrides: list[str], store: Path, run_dir: Path) -> float:
    """One more distilled student through the library, the teacher from the store."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from kdrun.config import config_dir, register_configs
    from kdrun.job import make_console
    from kdrun.pipeline import Pipeline
    from kdrun.report import Reporter

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"store_dir={store}"])
    torch.set_num_threads(1)
    p = Pipeline(cfg, run_dir, torch.device("cpu"), Reporter(make_console(), False))
    p.teacher()
    t0 = time.perf_counter()
    p.distill()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--overrides", default="experiment=smoke")
    ap.add_argument("--T", default="1,4")
    ap.add_argument("--alpha", default="0.5,0.9")
    a = ap.parse_args()
    base = [*a.overrides.split(), "runtime.num_threads=1", "device=cpu"]
    cells = [(t, al) for t in a.T.split(",") for al in a.alpha.split(",")]
    print(f"sweep: kdrun -m {' '.join(base)} T={a.T} alpha={a.alpha}  ({len(cells)} jobs)")
    ratios = []
    for rep in range(a.repeats):
        with tempfile.TemporaryDirectory(prefix="kdrun-bench-") as tmp:
            tmp = Path(tmp)
            t, al = cells[0]
            single = cli([*base, f"T={t}", f"alpha={al}", f"store_dir={tmp}/store1",
                          f"hydra.run.dir={tmp}/single"], tmp)  # fmt: skip
            more = [
                student_seconds([*base, f"T={t}", f"alpha={al}"], tmp / "store1", tmp / f"lib{i}")
                for i, (t, al) in enumerate(cells[1:])
            ]
            ref = single + sum(more)
            sweep = cli(["-m", *base, f"T={a.T}", f"alpha={a.alpha}", f"store_dir={tmp}/store2",
                         f"hydra.sweep.dir={tmp}/sweep"], tmp)  # fmt: skip
            doc = json.loads((tmp / "sweep" / "summary.json").read_text())
            trained = sum(j["teacher_from_cache"] is False for j in doc["jobs"])
            if trained != 1 or doc["n_failed"]:
                sys.exit(f"the sweep trained the teacher {trained} times, {doc['n_failed']} failed")
            ratios.append(sweep / ref)
            print(f"repeat {rep + 1}: single run {single:.2f}s + {len(more)} students "
                  f"{sum(more):.2f}s = R {ref:.2f}s; sweep S {sweep:.2f}s; S/R {sweep / ref:.3f}; "
                  f"teacher trained once")  # fmt: skip
    print(
        f"median S/R over {len(ratios)} repeats: {statistics.median(ratios):.3f} (target <= 1.25)"
    )


if __name__ == "__main__":
    main()
