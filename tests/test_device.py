"""Thread count and bf16 policy (kdrun.engine.device): the machine facts are faked, so every
case runs on any CPU (this one may well have native bf16)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from kdrun.engine import device as dev
from kdrun.engine.evaluate import autocast_context, predict
from tests.conftest import read_json


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def cpu(monkeypatch):
    """A fake CPU: set .cores, .quota, .flags; the bf16 answer is recomputed per test."""

    class Fake:
        cores, quota, flags = 8, None, {"avx2"}

    fake = Fake()
    monkeypatch.setattr(dev.os, "sched_getaffinity", lambda _pid: set(range(fake.cores)))
    monkeypatch.setattr(dev, "_cgroup_cpus", lambda: fake.quota)
    monkeypatch.setattr(dev, "cpu_flags", lambda: fake.flags)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    dev.cpu_has_native_bf16.cache_clear()
    dev._warn_bf16_fallback.cache_clear()
    yield fake
    dev.cpu_has_native_bf16.cache_clear()
    dev._warn_bf16_fallback.cache_clear()


JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
BASIC = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def _hydra(mode: str = "MULTIRUN", target: str = JOBLIB, n_jobs=2):
    launcher = {"_target_": target, "n_jobs": n_jobs}
    return OmegaConf.create({"mode": f"RunMode.{mode}", "launcher": launcher})


def test_usable_cores_is_affinity_capped_by_quota_and_slurm(cpu, monkeypatch):
    assert dev.usable_cores() == 8
    cpu.quota = 2.5  # a cgroup allowing 2.5 CPUs: 2 whole cores
    assert dev.usable_cores() == 2
    cpu.quota = 0.5  # never below one
    assert dev.usable_cores() == 1
    cpu.quota = None
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert dev.usable_cores() == 3


@pytest.mark.parametrize(
    ("hydra_cfg", "jobs"),
    [
        (None, 1),  # a plain function call, no Hydra
        (_hydra(mode="RUN"), 1),  # a single job
        (_hydra(target=BASIC), 1),  # a sequential sweep
        (_hydra(n_jobs=2), 2),
        (_hydra(n_jobs=-1), 8),  # joblib: -1 = every core
        (_hydra(n_jobs=-3), 6),  # -3 = all but two
        (_hydra(n_jobs=None), 1),
    ],
)
def test_concurrent_jobs_reads_the_joblib_launcher(hydra_cfg, jobs):
    assert dev.concurrent_jobs(hydra_cfg, cores=8) == jobs


def test_auto_threads_share_the_usable_cores(cpu):
    assert dev.auto_threads(None) == 8
    assert dev.auto_threads(_hydra(n_jobs=2)) == 4
    assert dev.auto_threads(_hydra(n_jobs=3)) == 2  # floor: never oversubscribe
    cpu.cores = 2
    assert dev.auto_threads(_hydra(n_jobs=4)) == 1  # at least one


def test_set_threads_applies_auto_counts_and_zero(cpu, restore_threads):
    cpu.cores = 2
    assert dev.set_threads("auto", _hydra(n_jobs=2)) == 1
    assert torch.get_num_threads() == 1
    assert dev.set_threads("auto", _hydra(mode="RUN")) == 2
    assert torch.get_num_threads() == 2
    assert dev.set_threads(1) == 1 and torch.get_num_threads() == 1
    assert dev.set_threads(0) == 1  # 0 keeps whatever torch has


def test_native_bf16_from_cpu_flags_else_a_probe(cpu, monkeypatch):
    assert not dev.cpu_has_native_bf16()  # AVX2 only
    for flag in ("avx512_bf16", "amx_bf16", "bf16"):
        cpu.flags = {"avx2", flag}
        dev.cpu_has_native_bf16.cache_clear()
        assert dev.cpu_has_native_bf16(), flag
    cpu.flags = None  # no /proc/cpuinfo: measure
    for ratio, native in ((0.003, False), (1.8, True)):
        monkeypatch.setattr(dev, "_bf16_probe_ratio", lambda r=ratio: r)
        dev.cpu_has_native_bf16.cache_clear()
        assert dev.cpu_has_native_bf16() is native


def test_bf16_without_native_support_falls_back_with_one_warning(cpu, caplog):
    cpu_dev = torch.device("cpu")
    with caplog.at_level(logging.WARNING, logger="kdrun"):
        assert dev.effective_amp("bf16", cpu_dev) == "off"
        assert dev.effective_amp("bf16", cpu_dev) == "off"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "runtime.amp=bf16_force" in lines[0]  # names the override that keeps bf16
    assert dev.effective_amp("bf16_force", cpu_dev) == "bf16"
    assert dev.effective_amp("bf16", torch.device("cuda")) == "bf16"  # GPUs are not probed
    assert dev.effective_amp("off", cpu_dev) == "off"
    cpu.flags = {"avx512_bf16"}
    dev.cpu_has_native_bf16.cache_clear()
    assert dev.effective_amp("bf16", cpu_dev) == "bf16"


def test_autocast_and_predict_follow_the_fallback(cpu):
    a = torch.randn(4, 4)
    with autocast_context(torch.device("cpu"), "bf16"):
        assert (a @ a).dtype == torch.float32  # fell back
    with autocast_context(torch.device("cpu"), "bf16_force"):
        assert (a @ a).dtype == torch.bfloat16
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    assert torch.equal(predict(model, a, 2, "bf16"), predict(model, a, 2, "off"))


def test_calibration_picks_the_budget_only_when_it_clearly_wins(monkeypatch, tmp_path):
    model, x = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2)), torch.randn(16, 4)
    for secs, chosen in (({1: 1.0, 4: 0.5}, 4), ({1: 1.0, 4: 0.9}, 1), ({1: 1.0, 4: 1.2}, 1)):
        monkeypatch.setattr(dev, "seconds_per_step", lambda *_a, s=secs, **_k: s)
        assert dev.calibrated_threads(model, x, 4) == chosen, secs
    assert dev.calibrated_threads(model, x, 1) == 1  # nothing to choose


def test_calibration_is_remembered_per_model_and_machine(monkeypatch, tmp_path):
    cache = tmp_path / "store" / "threads.json"
    calls = []

    def timed(_step, counts, reps=5):
        calls.append(counts)
        return {1: 1.0, counts[-1]: 0.4}

    monkeypatch.setattr(dev, "seconds_per_step", timed)
    small, big = nn.Linear(4, 2), nn.Linear(4, 3)
    x = torch.randn(8, 4)
    assert dev.calibrated_threads(small, x, 2, cache) == 2
    assert dev.calibrated_threads(small, x, 2, cache) == 2
    assert len(calls) == 1  # the second answer came from the store
    dev.calibrated_threads(big, x, 2, cache)
    assert len(calls) == 2 and len(read_json(cache)) == 2  # another model: measured again
    cache.write_text("{not json")  # a damaged cache is measured again, not fatal
    assert dev.calibrated_threads(small, x, 2, cache) == 2 and len(calls) == 3


def test_calibration_leaves_model_rng_and_threads_as_found(restore_threads):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(16, 4)
    torch.set_num_threads(1)
    rng = torch.get_rng_state()
    dev.calibrated_threads(model, x, 2)
    assert torch.equal(torch.get_rng_state(), rng)  # training's dropout draws are unchanged
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.get_num_threads() == 1


def test_seconds_per_step_times_each_count_and_gives_up_on_a_slow_one(restore_threads):
    """A fake clock: a step costs 1 unit on 1 thread and 5 on 2 (a busy machine)."""
    now, seen = [0.0], []

    def step():
        seen.append(torch.get_num_threads())
        now[0] += {1: 1, 2: 5}[torch.get_num_threads()]

    clock = SimpleNamespace(perf_counter=lambda: now[0])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dev, "time", clock)
        secs = dev.seconds_per_step(step, [1, 2], reps=3)
    assert secs == {1: 1, 2: 5}
    assert seen == [1, 2, 1, 2]  # warm-up, one timed round, then it gave up


def test_a_model_the_probe_cannot_drive_keeps_the_budget():
    class WantsADict(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, batch):
            if not isinstance(batch, dict):
                raise TypeError("expected a dict of inputs")
            return self.fc(batch["x"])

    assert dev.calibrated_threads(WantsADict(), torch.randn(8, 4), 2) == 2
