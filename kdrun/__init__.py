"""kdrun: a command-line experiment runner for knowledge distillation."""

import os

# OpenMP reads its spin count once, when torch loads it: set here, before any kdrun module
# imports torch (joblib workers inherit it). An idle OpenMP thread spins 10000 times (~0.1 ms,
# 1/30 of libgomp's default) before sleeping: 2 threads then train the CNN teacher at 27 ms a
# step, as fast as ACTIVE (PASSIVE: 61, slower than 1 thread's 42). Spinning costs 3x under
# contention, but there the thread governor (engine/threads.py) runs 1 thread: no team spins.
# A user's OMP_WAIT_POLICY or GOMP_SPINCOUNT wins (GOMP_SPINCOUNT would override the policy).
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

__version__ = "0.1.0"
