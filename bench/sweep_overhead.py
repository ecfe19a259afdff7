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
Both sides run with one thread (OMP_NUM_THREADS=1, runtime.num_threads=1). The ratio is
given for wall time (the issue's measure) and for CPU time (user + system, of the kdrun
processes and of this one for the library part), which other load on a shared machine
disturbs far less.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import machine_line  # noqa: E402


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cli(args: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one kdrun command."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    t0, c0 = time.perf_counter(), children_cpu()
    r = subprocess.run(
        [sys.executable, "-m", "kdrun", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    wall, cpu = time.perf_counter() - t0, children_cpu() - c0
    if r.returncode != 0:
        sys.exit(f"kdrun {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return wall, cpu


def student_seconds(overrides: list[str], store: Path, run_dir: Path) -> tuple[float, float]:
    """One more distilled student through the library, the teacher from the store."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from kdrun.config import config_dir, register_configs
    from kdrun.experiments.job import make_console
    from kdrun.experiments.pipeline import Pipeline
    from kdrun.report import Reporter

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"store_dir={store}"])
    torch.set_num_threads(1)
    p = Pipeline(cfg, run_dir, torch.device("cpu"), Reporter(make_console(), False))
    p.teacher()
    t0, c0 = time.perf_counter(), time.process_time()
    p.distill()
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--overrides", default="experiment=smoke")
    ap.add_argument("--T", default="1,4")
    ap.add_argument("--alpha", default="0.5,0.9")
    a = ap.parse_args()
    base = [*a.overrides.split(), "runtime.num_threads=1", "device=cpu"]
    cells = [(t, al) for t in a.T.split(",") for al in a.alpha.split(",")]
    print(machine_line(), flush=True)
    print(f"sweep: kdrun -m {' '.join(base)} T={a.T} alpha={a.alpha}  ({len(cells)} jobs)")
    ratios: dict[str, list[float]] = {"wall": [], "cpu": []}
    for rep in range(a.repeats):
        with tempfile.TemporaryDirectory(prefix="kdrun-bench-") as tmp:
            tmp = Path(tmp)
            t, al = cells[0]
            single = cli(
                [
                    *base,
                    f"T={t}",
                    f"alpha={al}",
                    f"store_dir={tmp}/store1",
                    f"hydra.run.dir={tmp}/single",
                ],
                tmp,
            )
            more = [
                student_seconds([*base, f"T={t}", f"alpha={al}"], tmp / "store1", tmp / f"lib{i}")
                for i, (t, al) in enumerate(cells[1:])
            ]
            sweep = cli(
                [
                    "-m",
                    *base,
                    f"T={a.T}",
                    f"alpha={a.alpha}",
                    f"store_dir={tmp}/store2",
                    f"hydra.sweep.dir={tmp}/sweep",
                ],
                tmp,
            )
            doc = json.loads((tmp / "sweep" / "summary.json").read_text())
            trained = sum(j["teacher_from_cache"] is False for j in doc["jobs"])
            if trained != 1 or doc["n_failed"]:
                sys.exit(f"the sweep trained the teacher {trained} times, {doc['n_failed']} failed")
            line = [f"repeat {rep + 1} (teacher trained once):"]
            for i, kind in enumerate(ratios):
                extra = sum(m[i] for m in more)
                ref, s = single[i] + extra, sweep[i]
                ratios[kind].append(s / ref)
                line.append(
                    f"{kind}: R = {single[i]:.2f} + {extra:.2f} = {ref:.2f}s, "
                    f"S = {s:.2f}s, S/R = {s / ref:.3f};"
                )
            print(" ".join(line))
    for kind, rs in ratios.items():
        print(
            f"median S/R ({kind} time) over {len(rs)} repeats: {statistics.median(rs):.3f} "
            f"(target <= 1.25)"
        )


if __name__ == "__main__":
    main()
