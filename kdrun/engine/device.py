"""Which device a job trains on, how many CPU threads it uses, and whether the CPU has native
bfloat16 arithmetic.

Threads: ``runtime.num_threads=auto`` gives each job ``max(1, usable cores // concurrent
jobs)``, fixed for the whole job: no clock is read, so the same command repeats bit for
bit. Usable cores are the process's CPU affinity, capped by a cgroup CPU quota and by Slurm's
``SLURM_CPUS_PER_TASK``; concurrent jobs are the joblib launcher's ``n_jobs`` when the job is
part of a multirun. torch's own default (every core of the machine) oversubscribes
a shared machine: one competing process made the default job 3x slower.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdrun.errors import ConfigError
from kdrun.store import atomic_write_json

log = logging.getLogger("kdrun")

# Flags of /proc/cpuinfo that mean bf16 dot products in hardware (x86: AVX512-BF16, AMX;
# aarch64: the BF16 extension). Without them torch's CPU bf16 matmul falls back to slow code:
# 0.3 GFLOP/s against 115 GFLOP/s for float32 on an AVX2 EPYC.
_NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here; use device=cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name} but MPS is not available here; use device=cpu or auto")
    return dev


# --------------------------------------------------------------------------- threads


def _cgroup_cpus() -> float | None:
    """CPUs allowed by a cgroup quota (v2 cpu.max, else v1 cfs_quota/period), None if none."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        base = Path("/sys/fs/cgroup/cpu")
        quota = int((base / "cpu.cfs_quota_us").read_text())
        period = int((base / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    """Cores this process may use: affinity, capped by the cgroup quota and Slurm's grant."""
    if hasattr(os, "sched_getaffinity"):
        n = len(os.sched_getaffinity(0))
    else:
        n = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if quota is not None:
        n = min(n, max(1, int(quota)))
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        n = min(n, int(slurm))
    return max(1, n)


def concurrent_jobs(hydra_cfg: Any | None, cores: int) -> int:
    """How many jobs of this multirun run at once on this machine: the joblib launcher's
    ``n_jobs`` (joblib's convention: -1 = all cores, -2 = all but one); otherwise 1."""
    if hydra_cfg is None or not str(hydra_cfg.get("mode", "")).endswith("MULTIRUN"):
        return 1
    launcher = hydra_cfg.get("launcher") or {}
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return 1
    n = launcher.get("n_jobs")
    if n is None:
        return 1
    n = int(n)
    return max(1, n if n > 0 else cores + 1 + n)


def auto_threads(hydra_cfg: Any | None = None) -> int:
    cores = usable_cores()
    return max(1, cores // concurrent_jobs(hydra_cfg, cores))


def thread_count(setting: int | str, hydra_cfg: Any | None = None) -> int:
    """``runtime.num_threads`` as a count: "auto" and "adaptive" (the same starting count,
    from rules that never read a clock), 0 (torch's default: every core) or N."""
    if str(setting) in ("auto", "adaptive"):
        return auto_threads(hydra_cfg)
    n = int(setting)
    return n if n > 0 else torch.get_num_threads()


def set_threads(setting: int | str, hydra_cfg: Any | None = None) -> int:
    """Apply ``runtime.num_threads`` to this process; returns the thread count in force.
    ``hydra_cfg``: the Hydra job's own config, handed down by the caller (the engine never
    reads Hydra's global state)."""
    n = thread_count(setting, hydra_cfg)
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n


# More threads must win by this factor on the job's own training step to be used: a smaller
# gain turns into a loss of several times as soon as another process wants a core (the
# barrier at the end of every parallel region waits for the descheduled thread).
SPEEDUP_NEEDED = 1.3


def seconds_per_step(
    step: Callable[[], None], counts: list[int], reps: int = 3, give_up: float = 2.0
) -> dict[int, float]:
    """Median seconds of ``step`` at each thread count, interleaved so that load changes hit
    every count alike, after one untimed warm-up each. Stops early once a count is ``give_up``
    times slower than the first (on a busy machine those steps are the expensive ones).
    Leaves torch's thread count as found."""
    before = torch.get_num_threads()
    times: dict[int, list[float]] = {n: [] for n in counts}
    try:
        for i in range(reps + 1):
            for n in counts:
                torch.set_num_threads(n)
                t = time.perf_counter()
                step()
                if i:
                    times[n].append(time.perf_counter() - t)
            if i and any(times[n][-1] > give_up * times[counts[0]][-1] for n in counts[1:]):
                break
    finally:
        torch.set_num_threads(before)
    return {n: statistics.median(ts) for n, ts in times.items()}


def training_step_probe(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """Forward and backward of a copy of ``model`` on ``x`` (the original, its BatchNorm
    statistics and its gradients are untouched)."""
    probe = copy.deepcopy(model).train()

    def step() -> None:
        out = probe(x)
        out = out[0] if isinstance(out, (tuple, list)) else out
        out.float().square().mean().backward()
        probe.zero_grad(set_to_none=True)

    return step


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def calibrated_threads(
    model: nn.Module, x: torch.Tensor, budget: int, cache_file: Path | None = None
) -> int:
    """1 or ``budget`` threads for training ``model`` on batches like ``x``: ``budget`` only
    when its step is SPEEDUP_NEEDED times faster than one thread's. Measured once per CPU,
    torch version, model and batch shape, and remembered in ``cache_file`` (JSON)."""
    if budget <= 1:
        return 1
    params = sum(p.numel() for p in model.parameters())
    key = f"{cpu_model()}|{torch.__version__}|{budget}|{type(model).__name__}|{params}|"
    key += "x".join(map(str, x.shape))
    known = _read_json(cache_file)
    if key in known:
        return int(known[key])
    try:
        with torch.random.fork_rng(devices=[]):  # dropout draws must not shift training's RNG
            secs = seconds_per_step(training_step_probe(model, x), [1, budget])
    except Exception as e:  # a model the probe cannot drive (other inputs): no speed probe
        log.debug("thread calibration skipped (%s): using %d threads", e, budget)
        return budget
    chosen = budget if secs[budget] * SPEEDUP_NEEDED <= secs[1] else 1
    if cache_file is not None:
        try:
            atomic_write_json({**_read_json(cache_file), key: chosen}, cache_file)
        except OSError as e:  # a read-only store: measure again next time
            log.debug("could not remember the thread count in %s: %s", cache_file, e)
    return chosen


def _read_json(path: Path | None) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------- bf16


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (x86 "flags", aarch64 "Features")."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


@cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware. From /proc/cpuinfo where it exists;
    elsewhere a ~50 ms probe: bf16 matmul at least a quarter of the float32 rate."""
    flags = cpu_flags()
    if flags is not None:
        return bool(flags & _NATIVE_BF16_FLAGS)
    return _bf16_probe_ratio() >= 0.25


def _bf16_probe_ratio(n: int = 128, reps: int = 3) -> float:
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        torch.mm(a, b)
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        rates[dtype] = reps / max(time.perf_counter() - t, 1e-9)
    return rates[torch.bfloat16] / rates[torch.float32]


@cache
def _warn_bf16_fallback() -> None:
    log.warning(
        "runtime.amp=bf16 on a CPU without native bf16 (no avx512_bf16/amx_bf16 flag): "
        "training in float32 instead, bf16 would be ~100x slower here "
        "(runtime.amp=bf16_force keeps bf16)"
    )


def effective_amp(amp: str, device: torch.device) -> str:
    """The autocast mode actually used: ``bf16`` on a CPU without native bf16 falls back to
    float32 ("off") with a one-line warning; ``bf16_force`` is bf16 regardless."""
    if amp == "bf16_force":
        return "bf16"
    if amp == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        _warn_bf16_fallback()
        return "off"
    return amp
