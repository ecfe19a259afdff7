"""GPU-correctness fixes that a CPU can check: index arithmetic instead of boolean masks (DKD),
no per-step recompilation (CRD under torch.compile), the same draws as before."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.methods.crd import CRD, CRDOptions
from kdrun.methods.dkd import dkd_per_sample


def _dkd_reference(s, t, y, T):
    """The boolean-mask formulation (mdistiller's): the numbers the rewrite must keep."""
    s, t = s.float() / T, t.float() / T
    b, c = s.shape
    gt = F.one_hot(y, c).bool()

    def binary(z):
        p = z.softmax(1)
        pt = (p * gt).sum(1)
        return torch.stack([pt, 1 - pt], 1).log()

    bs, bt = binary(s), binary(t)
    tckd = (bt.exp() * (bt - bs)).sum(1)
    ls, lt = F.log_softmax(s[~gt].view(b, c - 1), 1), F.log_softmax(t[~gt].view(b, c - 1), 1)
    return tckd, (lt.exp() * (lt - ls)).sum(1)


def test_dkd_index_gather_equals_the_boolean_mask_version():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(9, 7, generator=g) * 3, torch.randn(9, 7, generator=g) * 3
    y = torch.tensor([0, 6, 3, 3, 1, 5, 2, 4, 0])  # first and last class included
    for T in (1.0, 4.0):
        tckd, nckd = dkd_per_sample(s, t, y, T)
        ref_t, ref_n = _dkd_reference(s, t, y, T)
        torch.testing.assert_close(tckd, ref_t, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(nckd, ref_n, rtol=1e-5, atol=1e-6)


def test_dkd_traces_as_one_graph():
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 4, 2, 1])
    torch._dynamo.reset()
    explained = torch._dynamo.explain(dkd_per_sample)(s, t, y, 4.0)
    assert explained.graph_break_count == 0 and explained.graph_count == 1


def _crd(seed=0):
    torch.manual_seed(seed)
    nets = []
    for _ in range(2):
        net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4))
        net.kd_stages, net.kd_head = ["0"], "2"
        nets.append(net)
    labels = torch.arange(40) % 4
    return CRD(
        nets[0], nets[1], CRDOptions(nce_k=16, feat_dim=8), (5, 5), labels, torch.arange(40), seed
    )


def _steps(d, compiled: bool, n: int = 4):
    fwd = torch.compile(d, backend="eager") if compiled else d
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(n):
        idx = torch.randperm(40, generator=g)[:6]
        x = torch.randn(6, 3, generator=g)
        _, parts = fwd(x, d.labels[idx], idx, None)
        losses.append(parts["crd"].detach())
    return torch.stack(losses)


def test_crd_compiles_once_and_draws_what_eager_draws():
    torch._dynamo.reset()
    eager = _crd()
    eager.train()
    ref = _steps(eager, compiled=False)
    comp = _crd()
    comp.train()
    with torch._dynamo.config.patch(error_on_recompile=True):  # a recompile raises
        out = _steps(comp, compiled=True)
    torch.testing.assert_close(out, ref)
    assert comp._step == eager._step == 4
    assert torch.equal(comp.memory_s, eager.memory_s) and torch.equal(comp.z, eager.z)


def test_amp_auto_picks_bf16_only_from_ampere_on(monkeypatch):
    from kdrun.config import RuntimeConfig
    from kdrun.engine.evaluate import resolve_amp
    from kdrun.engine.perf import Perf

    cuda = torch.device("cuda", 0)
    for cap, want in (((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None, c=cap: c)
        assert resolve_amp("auto", cuda) == want
        # fused by default; with fp16's GradScaler even when switched off (no host sync)
        assert Perf.from_config(RuntimeConfig(), cuda).fused_optimizer is True
        off = RuntimeConfig(fused_optimizer=False)
        assert Perf.from_config(off, cuda).fused_optimizer is (want == "fp16")
    assert resolve_amp("auto", torch.device("cpu")) == "off"
    assert resolve_amp("bf16", torch.device("cpu")) == "bf16"


def test_rng_state_holds_only_the_training_devices_generator():
    from kdrun.engine.checkpoint import rng_state, seed_everything, set_rng_state

    gen = seed_everything(3)
    state = rng_state(gen, torch.device("cpu"))
    assert "cuda" not in state and "cuda_device" not in state
    a = torch.rand(3, generator=gen)
    # an old checkpoint's all-GPU list is ignored, not restored onto fewer GPUs (IndexError)
    set_rng_state(
        gen, {**state, "cuda": [torch.zeros(8, dtype=torch.uint8)] * 4}, torch.device("cpu")
    )
    assert torch.equal(torch.rand(3, generator=gen), a)


def test_device_is_not_part_of_the_checkpoint_fingerprint():
    from omegaconf import OmegaConf

    from kdrun.config import KdrunConfig
    from kdrun.experiments.specs import resumable_config

    base = OmegaConf.structured(KdrunConfig(device="cuda"))
    moved = OmegaConf.merge(base, {"device": "cuda:1", "runtime": {"dist_backend": "gloo"}})
    assert resumable_config(base) == resumable_config(moved)
    other = OmegaConf.merge(base, {"runtime": {"sync_bn": "off"}})  # changes results: kept
    assert resumable_config(base) != resumable_config(other)


def test_deterministic_switch_sets_and_unsets_the_global_flags():
    from kdrun.engine.perf import configure_backends

    try:
        configure_backends(True, torch.device("cpu"))
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        configure_backends(False, torch.device("cpu"))
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic


def test_augmentation_slices_draw_what_one_process_draws():
    from kdrun.data.bundle import augment_batch

    x = torch.randn(7, 3, 8, 8)
    whole = augment_batch(x, 2, True, torch.Generator().manual_seed(5))
    parts = [
        augment_batch(x[a:b], 2, True, torch.Generator().manual_seed(5), (a, b, 7))
        for a, b in ((0, 4), (4, 7))
    ]
    assert torch.equal(torch.cat(parts), whole)
    assert whole.is_contiguous(memory_format=torch.channels_last)  # not copied back to NCHW
