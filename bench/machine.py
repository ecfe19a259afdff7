"""The machine line every bench/ script prints first, so a reader on another CPU can scale
the times that follow: CPU model, usable cores, torch's CPU capability, float32 and bfloat16
matmul rates, and the load when the script started.

    python bench/machine.py        # just the line
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's kdrun

# kdrun's OpenMP spin setting (kdrun/__init__.py), so the rates below are what kdrun gets.
# Must precede importing torch.
import kdrun  # noqa: E402, F401

# isort: split
import torch  # noqa: E402

# The same readings kdrun's thread and bf16 choices use (kdrun/engine/device.py).
from kdrun.engine.device import cpu_flags, cpu_model, usable_cores  # noqa: E402


def matmul_gflops(dtype: torch.dtype = torch.float32, budget_s: float = 0.5) -> float:
    """torch.mm rate for ``dtype`` on square matrices, median of 5. The size grows from 128
    until one product takes 20 ms (or n = 2048), so a dtype without native kernels (bf16 on
    an AVX2 CPU runs ~300x slower than float32) still finishes within about ``budget_s``."""
    torch.mm(torch.randn(256, 256).to(dtype), torch.randn(256, 256).to(dtype))  # warm-up
    n = 128
    while True:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        t = time.perf_counter()
        torch.mm(a, b)
        dt = time.perf_counter() - t
        if dt > 0.02 or n >= 2048:
            break
        n *= 2
    reps = max(1, min(5, int(budget_s / max(dt, 1e-6))))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        ts.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(ts) / 1e9


def machine_line() -> str:
    """One line: what this machine is and how fast it multiplies, with the load now."""
    flags = cpu_flags() or set()
    native_bf16 = sorted(f for f in ("avx512_bf16", "amx_bf16") if f in flags)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"machine: {cpu_model()}, {usable_cores()} usable cores ({os.cpu_count()} logical), "
        f"torch {torch.__version__} CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"native bf16: {'/'.join(native_bf16) or 'no'}; matmul "
        f"fp32 {matmul_gflops(torch.float32):.3g} GFLOP/s, "
        f"bf16 {matmul_gflops(torch.bfloat16):.3g} GFLOP/s "
        f"on {torch.get_num_threads()} threads; load {load:.2f}"
    )


if __name__ == "__main__":
    print(machine_line(), flush=True)
