"""The speed features must not change what is learned: the teacher-logit cache is aligned by
sample index and never stale, augmented batches reach teacher and student identically, and
every runtime switch runs. (Speed itself is measured in bench/bench_perf.py, not here.)"""

from __future__ import annotations

import io
import json

import pytest
import torch
from omegaconf import OmegaConf
from rich.console import Console
from torch import nn

from kdrun.config import KdrunConfig
from kdrun.engine import Perf, data_device, fetch, fit, predict
from kdrun.errors import TrainingError
from kdrun.experiments.pipeline import Pipeline
from kdrun.methods.base import HardLabels
from kdrun.methods.kd import KD
from kdrun.models import build_model
from kdrun.report import Reporter
from kdrun.store import sha256_file

torch.set_num_threads(1)  # deterministic and polite on the shared CI machine


def make_cfg(tmp_path, **over):
    cfg = OmegaConf.structured(KdrunConfig)
    cfg.dataset.name = "digits"
    cfg.dataset.val_size = 0.2
    for role, hidden in (("teacher", [64]), ("student", [16])):
        cfg[role].name = "mlp"
        cfg[role].hidden = hidden
        cfg[role].train.epochs = 2
        cfg[role].train.batch_size = 64
    cfg.store_dir = str(tmp_path / "store")
    cfg.device = "cpu"
    for k, v in over.items():
        OmegaConf.update(cfg, k, v)
    return cfg


def make_pipeline(tmp_path, **over) -> Pipeline:
    cfg = make_cfg(tmp_path, **over)
    rep = Reporter(Console(file=io.StringIO()), progress=False)
    return Pipeline(cfg, tmp_path / "run", torch.device("cpu"), rep)


def random_teacher(p: Pipeline, seed: int = 0, key: str = "teacher:A") -> nn.Module:
    torch.manual_seed(seed)
    p.teacher_keys = [key]
    return build_model(p.cfg.teacher, p.data.in_shape, p.data.num_classes)


def kd(p: Pipeline, teacher: nn.Module) -> KD:
    torch.manual_seed(1)
    return KD(build_model(p.cfg.student, p.data.in_shape, 10), teacher, p.cfg.T, p.cfg.alpha)


def outputs_of(p: Pipeline, dist) -> torch.Tensor:
    """The stored teacher outputs (the student's rows: every training row here)."""
    cache = p.teacher_cache(dist)
    assert cache is not None and torch.equal(cache.pos, torch.arange(len(p.data.y_train)))
    return cache.outputs


def logits_dir(p: Pipeline):
    dirs = [d for d in (p.store.root / "teacher_logits").iterdir() if d.is_dir()]
    assert len(dirs) == 1
    return dirs[0]


class Spy(KD):
    """Records what the student and the teacher output/see at every step."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.steps: list[dict[str, torch.Tensor]] = []

    def forward(self, x, y, idx, teacher_out):
        fresh = self.teacher_outputs(x)
        given = None if teacher_out is None else teacher_out.clone()
        self.steps.append({"x": x.clone(), "idx": idx.clone(), "fresh": fresh, "given": given})
        return super().forward(x, y, idx, teacher_out)


def test_cached_logits_match_fresh_teacher_under_shuffling(tmp_path):
    p = make_pipeline(tmp_path)
    teacher = random_teacher(p)
    dist = Spy(kd(p, teacher).student, teacher, 4.0, 0.9)
    cache = outputs_of(p, dist)
    assert cache is not None and cache.shape == (len(p.data.y_train), 10)
    d = p.data
    fit(
        dist,
        d,
        p.cfg.student.train,
        stage="student",
        seed=3,
        train_idx=d.student_idx,
        val_idx=d.student_val_idx,
        teacher_cache=cache,
    )
    first = torch.cat([s["idx"] for s in dist.steps[:5]])
    assert not torch.equal(first, first.sort().values)  # the batches really are shuffled
    for s in dist.steps:
        assert s["given"] is not None
        torch.testing.assert_close(s["given"], s["fresh"], rtol=1e-5, atol=1e-5)


def test_cache_is_reused_across_jobs_and_keyed_by_teacher(tmp_path):
    p1 = make_pipeline(tmp_path, T=4.0)
    c1 = outputs_of(p1, kd(p1, random_teacher(p1)))
    p2 = make_pipeline(tmp_path, T=2.0, alpha=0.5)  # another job of the sweep: same teacher
    c2 = outputs_of(p2, kd(p2, random_teacher(p2)))
    assert torch.equal(c1, c2)
    assert len([d for d in (p1.store.root / "teacher_logits").iterdir() if d.is_dir()]) == 1
    p3 = make_pipeline(tmp_path)  # another teacher: its own cache, never the first one's
    c3 = outputs_of(p3, kd(p3, random_teacher(p3, seed=5, key="teacher:B")))
    assert not torch.allclose(c1, c3)
    assert len([d for d in (p1.store.root / "teacher_logits").iterdir() if d.is_dir()]) == 2


def _tamper(d, payload: torch.Tensor) -> None:
    """Replace a stored payload *consistently* (checksum updated), as a stale cache would be."""
    torch.save(payload, d / "payload.pt")
    meta = json.loads((d / "meta.json").read_text())
    meta["sha256"] = sha256_file(d / "payload.pt")
    (d / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda t: t.roll(1, dims=0),  # shifted by one sample: misaligned
        lambda t: t[:-1],  # wrong row count
        lambda t: t + 0.5 * t.std(),  # another teacher's values under this key
    ],
    ids=["shifted", "rows", "stale"],
)
def test_stale_or_misaligned_cache_is_rejected_and_rebuilt(tmp_path, corrupt, caplog):
    p = make_pipeline(tmp_path)
    teacher = random_teacher(p)
    good = outputs_of(p, kd(p, teacher))
    _tamper(logits_dir(p), corrupt(good))
    again = make_pipeline(tmp_path)
    cache = outputs_of(again, kd(again, random_teacher(again)))
    assert torch.equal(cache, good)
    assert "corrupt" in caplog.text


def test_same_key_but_replaced_teacher_is_detected(tmp_path):
    """e.g. teacher.checkpoint=FILE overwritten by another teacher: the key stays, the
    spot-check of recomputed rows does not."""
    p = make_pipeline(tmp_path)
    old = outputs_of(p, kd(p, random_teacher(p, seed=0)))
    q = make_pipeline(tmp_path)
    new_teacher = random_teacher(q, seed=7)  # same key "teacher:A", other weights
    cache = outputs_of(q, kd(q, new_teacher))
    assert not torch.allclose(cache, old)
    torch.testing.assert_close(cache, predict(new_teacher, q.data.x_train), rtol=1e-5, atol=1e-5)


def test_fit_refuses_a_cache_of_the_wrong_length(tmp_path):
    p = make_pipeline(tmp_path)
    d = p.data
    with pytest.raises(TrainingError, match="stale"):
        fit(
            kd(p, random_teacher(p)),
            d,
            p.cfg.student.train,
            stage="student",
            seed=0,
            train_idx=d.student_idx,
            val_idx=d.student_val_idx,
            teacher_cache=torch.zeros(len(d.y_train) - 1, 10),
        )


def test_augmented_batches_reach_teacher_and_student_identically(tmp_path):
    p = make_pipeline(tmp_path, **{"dataset.augment": True, "dataset.crop_padding": 2})
    teacher = random_teacher(p)
    seen: dict[str, list[torch.Tensor]] = {"teacher": [], "student": []}
    dist = kd(p, teacher)
    teacher.register_forward_pre_hook(lambda m, a: seen["teacher"].append(a[0].clone()))
    dist.student.register_forward_pre_hook(lambda m, a: seen["student"].append(a[0].clone()))
    d = p.data
    # A poisoned cache: if it were used for augmented batches the loss would be NaN.
    poison = torch.full((len(d.y_train), 10), float("nan"))
    fit(
        dist,
        d,
        p.cfg.student.train,
        stage="student",
        seed=0,
        train_idx=d.student_idx,
        val_idx=d.student_val_idx,
        teacher_cache=poison,
    )
    steps = len(seen["teacher"])
    assert steps == 2 * -(-len(d.student_idx) // 64)
    # the student also runs in validation (eval) after each epoch: compare training steps only
    train_inputs = [x for x in seen["student"] if x.shape[0] <= 64][:steps]
    for t_in, s_in in zip(seen["teacher"], train_inputs, strict=True):
        assert torch.equal(t_in, s_in)
    originals = d.x_train.index_select(0, d.student_idx)
    assert not any(torch.equal(t, originals[: len(t)]) for t in seen["teacher"])


def test_distillation_with_cache_equals_without(tmp_path):
    p = make_pipeline(tmp_path)
    teacher = random_teacher(p)
    d = p.data
    runs = []
    for use in (True, False):
        dist = kd(p, teacher)
        cache = outputs_of(p, dist) if use else None
        runs.append(
            fit(
                dist,
                d,
                p.cfg.student.train,
                stage="student",
                seed=0,
                train_idx=d.student_idx,
                val_idx=d.student_val_idx,
                teacher_cache=cache,
            )
        )
    cached, fresh = runs
    for k, v in fresh.last_state.items():
        torch.testing.assert_close(cached.last_state[k], v, rtol=1e-5, atol=1e-6)
    loss = [[r["loss"] for r in res.history] for res in runs]
    assert loss[0] == pytest.approx(loss[1], rel=1e-5)
    assert cached.best_val_acc == fresh.best_val_acc


def _fit_switch(tmp_path, model: str = "mlp", amp: str = "off", **perf) -> tuple:
    over = {"student.name": model, "student.channels": [4, 8]}
    p = make_pipeline(tmp_path, **over)
    d = p.data
    torch.manual_seed(1)
    student = Perf(**perf).prepare_model(build_model(p.cfg.student, d.in_shape, 10))
    res = fit(
        HardLabels(student),
        d,
        p.cfg.student.train,
        stage="baseline",
        seed=0,
        train_idx=d.student_idx,
        val_idx=d.student_val_idx,
        amp=amp,
        perf=Perf(**perf),
    )
    return student, res


def test_channels_last_changes_layout_not_results(tmp_path):
    plain_model, plain = _fit_switch(tmp_path / "a", model="cnn")
    cl_model, cl = _fit_switch(tmp_path / "b", model="cnn", channels_last=True)
    w = [m.weight for m in cl_model.modules() if isinstance(m, nn.Conv2d)][-1]  # C_in > 1
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    for k, v in plain.last_state.items():
        torch.testing.assert_close(cl.last_state[k].contiguous(), v, rtol=1e-3, atol=1e-3)


def test_fused_optimizer_and_compile_run_and_agree(tmp_path):
    _, ref = _fit_switch(tmp_path / "a")
    _, fused = _fit_switch(tmp_path / "b", fused_optimizer=True)
    _, comp = _fit_switch(tmp_path / "c", compile=True, compile_backend="eager")
    for other in (fused, comp):
        assert other.best_val_acc == pytest.approx(ref.best_val_acc, abs=0.02)
        for k, v in ref.last_state.items():
            torch.testing.assert_close(other.last_state[k], v, rtol=1e-3, atol=1e-3)


def test_bf16_autocast_on_cpu_trains(tmp_path):
    _, ref = _fit_switch(tmp_path / "a")
    _, bf = _fit_switch(tmp_path / "b", amp="bf16")
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in bf.history)
    assert bf.best_val_acc > ref.best_val_acc - 0.1


def test_data_placement_and_fetch():
    cpu = torch.device("cpu")
    assert data_device("auto", cpu, 1 << 40) == cpu
    assert data_device("host", torch.device("cuda"), 1) == cpu
    t = torch.arange(40.0).view(10, 4)
    idx = torch.tensor([7, 2, 2, 9])
    assert torch.equal(fetch(t, idx, cpu), t[idx])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_host_data_is_copied_to_cuda_from_pinned_memory():
    t = torch.randn(100, 3).pin_memory()
    idx = torch.randperm(100)[:17]
    out = fetch(t, idx, torch.device("cuda"))
    assert out.device.type == "cuda" and torch.equal(out.cpu(), t[idx])


@pytest.mark.slow
def test_cli_runs_with_the_switches(run_kdrun, tmp_path):
    """The runtime.* keys reach the pipeline (compile is covered in-process above: tracing
    three stages in a fresh process would double this test's time)."""
    r = run_kdrun(
        "experiment=smoke",
        "teacher=cnn",
        "teacher.channels=[4,8]",
        "student=mlp",
        "runtime.num_threads=1",
        "runtime.amp=bf16",
        "runtime.fused_optimizer=true",
        "runtime.channels_last=true",
        "runtime.data_on_device=host",
        run_dir=tmp_path / "run",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["student"]["test_acc"] > 0.5


def test_fast_channel_stats_equal_the_multi_axis_reduction():
    import numpy as np

    from kdrun.data.bundle import _channel_stats

    x = np.random.default_rng(0).random((64, 3, 5, 7), dtype=np.float32)
    mean, std = _channel_stats(x)
    assert np.array_equal(mean, x.mean(axis=(0, 2, 3), dtype=np.float64).astype(np.float32))
    assert np.array_equal(std, x.std(axis=(0, 2, 3), dtype=np.float64).astype(np.float32))
