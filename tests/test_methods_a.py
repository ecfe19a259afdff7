"""dkd, kd + logit standardization, fitnet, at, rkd, sp, crd and the feature hooks.

Per loss: a test against its written formula on small hand-made tensors and a property test;
the hooks on every registered model; each method through the whole CLI on the smoke config.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import itertools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from kdrun.config import ModelConfig
from kdrun.errors import ConfigError
from kdrun.methods import METHODS
from kdrun.methods.at import at_loss, attention_map, pair_by_resolution
from kdrun.methods.crd import CRD, CRDOptions, nce_loss
from kdrun.methods.dkd import DKD, DKDOptions, dkd_loss, dkd_per_sample
from kdrun.methods.fitnet import HintAdapter, hint_loss
from kdrun.methods.losses import kd_loss, standardize_logits
from kdrun.methods.rkd import angles, normalized_distances, rkd_angle_loss, rkd_distance_loss
from kdrun.methods.sp import sp_loss
from kdrun.models import MODEL_INPUTS, MODELS, build_model
from kdrun.models.features import capture, probe, resolve_stage
from tests.conftest import read_json

MY_METHODS = ["dkd", "fitnet", "at", "rkd", "sp", "crd"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def model(name: str, in_shape=(1, 8, 8), **kw) -> nn.Module:
    cfg = OmegaConf.structured(ModelConfig(name=name, **kw))
    torch.manual_seed(0)
    return build_model(cfg, in_shape, 10)


def orthogonal(n: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen(seed), dtype=torch.float64))
    return q.float()


# --------------------------------------------------------------------------- hooks


# Models from outside kdrun need a name to build (hf needs a saved directory: tested in
# tests/test_byo_models.py); their stages are found by probing (kdrun.models.stages).
EXTERNAL = {
    "torchvision": {"arch": "resnet18"},
    "timm": {"arch": "resnet10t"},
    "custom": {"_target_": "torchvision.models.resnet18"},
    "hf": None,
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_hooks_capture_every_stage_and_the_embedding(name):
    """Every registered model: each kd_stage is captured, the embedding is exactly the head's
    input (head(embedding) == logits), gradients flow through captures, hooks are removed."""
    if EXTERNAL.get(name, {}) is None or (name == "timm" and not importlib.util.find_spec("timm")):
        pytest.skip(f"{name} needs files or an extra to build")
    if name in ("gpt", "hf_causal_lm"):
        pytest.skip("a token-id model: its hooks are tested in tests/test_gpt.py")
    if MODEL_INPUTS.get(name) == "triples":
        pytest.skip("a knowledge-graph embedding model: no image stages (tests/test_kg.py)")
    m = model(name, (3, 32, 32), width=16, **EXTERNAL.get(name, {}))  # narrow: fast
    m.train()
    x = torch.randn(2, 3, 32, 32, generator=gen())
    with capture(m, m.kd_stages, embedding=True) as taps:
        out = m(x)
    assert set(taps.stages) == set(m.kd_stages)
    assert all(t.shape[0] == 2 for t in taps.stages.values())
    head = m.get_submodule(m.kd_head)
    assert taps.embedding.shape == (2, head.in_features)
    assert torch.allclose(head(taps.embedding), out, atol=1e-5)
    loss = (
        out.sum() + taps.embedding.pow(2).sum() + sum(t.pow(2).sum() for t in taps.stages.values())
    )
    loss.backward()  # no in-place op after a capture point broke the graph
    for n in [*m.kd_stages, m.kd_head]:
        mod = m.get_submodule(n)
        assert not mod._forward_hooks and not mod._forward_pre_hooks, n
    before = dict(taps.stages)
    m(x)  # outside the block nothing is captured any more
    assert all(taps.stages[k] is v for k, v in before.items())


def test_stage_specs_resolve_and_bad_ones_say_what_exists():
    m = model("cnn", channels=[4, 8, 16])
    assert resolve_stage(m, "mid") == "stages.1"
    assert resolve_stage(m, "-1") == "stages.2"
    assert resolve_stage(m, 0) == "stages.0"
    assert resolve_stage(m, "stages.0.0") == "stages.0.0"  # any module, not only stages
    with pytest.raises(ConfigError, match=r"out of range.*stages\.0, stages\.1, stages\.2"):
        resolve_stage(m, "3")
    with pytest.raises(ConfigError, match="not a module"):
        resolve_stage(m, "layer9")
    shapes = probe(m, (1, 8, 8), m.kd_stages)
    assert [tuple(t.shape[1:]) for t in shapes.stages.values()] == [
        (4, 4, 4),
        (8, 2, 2),
        (16, 2, 2),
    ]
    assert m.training  # the probe restored the mode


# --------------------------------------------------------------------------- kd + LS


def test_logit_standardization_matches_written_formula():
    z = torch.tensor([[1.0, 2.0, 4.0], [0.0, -3.0, 3.0]])
    for row, out in zip(z, standardize_logits(z), strict=True):
        mean = sum(row.tolist()) / 3
        std = math.sqrt(sum((v - mean) ** 2 for v in row.tolist()) / 2)  # unbiased, n - 1
        assert out.tolist() == pytest.approx([(v - mean) / (std + 1e-7) for v in row.tolist()])
    s, t, y, T, alpha = (
        z,
        torch.tensor([[3.0, 1.0, 0.0], [1.0, 1.0, 2.0]]),
        torch.tensor([2, 0]),
        2.0,
        0.7,
    )
    zs, zt = standardize_logits(s), standardize_logits(t)
    kl = 0.0
    for i in range(2):
        qt, qs = torch.softmax(zt[i] / T, 0), torch.softmax(zs[i] / T, 0)
        kl += float((qt * (qt.log() - qs.log())).sum()) / 2
    parts = kd_loss(s, t, y, T, alpha, standardize=True)
    assert parts["soft"].item() == pytest.approx(alpha * T * T * kl, rel=1e-5)
    assert parts["hard"].item() == pytest.approx((1 - alpha) * F.cross_entropy(s, y).item())


def test_logit_standardization_ignores_logit_shift_and_scale():
    t = torch.randn(6, 10, generator=gen(1))
    scale = torch.rand(6, 1, generator=gen(2)) * 5 + 0.1
    shift = torch.randn(6, 1, generator=gen(3)) * 10
    y = torch.zeros(6, dtype=torch.long)
    # a student with the teacher's relations but another range: zero with LS, not without
    assert kd_loss(t * scale + shift, t, y, 2.0, 1.0, standardize=True)["soft"].item() < 1e-6
    assert kd_loss(t * scale + shift, t, y, 2.0, 1.0)["soft"].item() > 1e-2


# --------------------------------------------------------------------------- dkd


def test_dkd_matches_written_formula():
    s = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.3, 0.2, 1.5, -0.5]])
    t = torch.tensor([[3.0, 1.0, 0.0, -2.0], [0.0, 1.0, 2.0, 0.5]])
    y = torch.tensor([0, 2])
    T, alpha, beta = 2.0, 1.5, 6.0
    tckd = nckd = 0.0
    for i in range(2):
        ps, pt = torch.softmax(s[i] / T, 0), torch.softmax(t[i] / T, 0)
        g = int(y[i])
        bs, bt = [ps[g], 1 - ps[g]], [pt[g], 1 - pt[g]]
        tckd += sum(float(bt[k] * (bt[k] / bs[k]).log()) for k in range(2)) / 2
        o = [c for c in range(4) if c != g]
        qs, qt = ps[o] / ps[o].sum(), pt[o] / pt[o].sum()
        nckd += float((qt * (qt / qs).log()).sum()) / 2
    parts = dkd_loss(s, t, y, T, alpha, beta)
    assert parts["tckd"].item() == pytest.approx(alpha * T * T * tckd, rel=1e-5)
    assert parts["nckd"].item() == pytest.approx(beta * T * T * nckd, rel=1e-5)


def test_dkd_decomposes_kd_and_vanishes_when_student_equals_teacher():
    """Zhao et al. eq. (3): KL(p_t || p_s) = TCKD + (1 - p_t[target]) * NCKD, per sample."""
    s, t = torch.randn(8, 10, generator=gen(4)) * 3, torch.randn(8, 10, generator=gen(5)) * 3
    y = torch.randint(0, 10, (8,), generator=gen(6))
    T = 3.0
    tckd, nckd = dkd_per_sample(s, t, y, T)
    pt = torch.softmax(t / T, 1)
    kl = (pt * (pt.log() - torch.log_softmax(s / T, 1))).sum(1)
    assert torch.allclose(kl, tckd + (1 - pt[torch.arange(8), y]) * nckd, atol=1e-5)
    zero = dkd_loss(t, t.clone(), y, T, 1.0, 8.0)
    assert zero["tckd"].abs().item() < 1e-6 and zero["nckd"].abs().item() < 1e-6
    extreme = dkd_loss(
        torch.tensor([[500.0, -500.0, 0.0]]),
        torch.tensor([[-500.0, 500.0, 0.0]]),
        torch.tensor([0]),
        1.0,
        1.0,
        8.0,
    )
    assert all(torch.isfinite(v) for v in extreme.values())


def test_dkd_warmup_rises_per_epoch_and_is_clamped_to_the_run():
    opts = DKDOptions(warmup=4)
    d = DKD(nn.Linear(3, 5), nn.Linear(3, 5), opts, steps_per_epoch=2, epochs=10)
    x, y = torch.randn(4, 3), torch.zeros(4, dtype=torch.long)
    seen = []
    for _ in range(10):  # 5 epochs of 2 steps
        seen.append(round(float(d.warmup_factor()), 4))
        d(x, y, None, None)
    assert seen == [0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0, 1.0, 1.0]
    d.eval()
    d(x, y, None, None)  # evaluation does not advance the warm-up
    assert int(d.step) == 10
    short = DKD(nn.Linear(3, 5), nn.Linear(3, 5), DKDOptions(warmup=20), 1, epochs=2)
    assert short.warmup == 2 and DKD.cacheable


# --------------------------------------------------------------------------- fitnet


def test_hint_loss_is_the_mean_squared_error():
    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    b = torch.tensor([[[[1.0, 0.0], [3.0, 7.0]]]])
    assert hint_loss(a, b).item() == pytest.approx((0 + 4 + 0 + 9) / 4)
    assert hint_loss(a, a).item() == 0 and hint_loss(a, b).item() == hint_loss(b, a).item()


@pytest.mark.parametrize(
    "s_shape,t_shape",
    [
        ((8, 14, 14), (32, 7, 7)),
        ((8, 4, 4), (16, 8, 8)),
        ((64,), (32, 7, 7)),
        ((16, 7, 7), (128,)),
        ((8, 7, 7), (8, 7, 7)),
    ],
)
def test_hint_adapter_maps_any_student_feature_to_the_teacher_shape(s_shape, t_shape):
    a = HintAdapter(s_shape, t_shape)
    out = a(torch.randn(3, *s_shape))
    assert out.shape == (3, *t_shape)
    # it can learn: a few steps lower the hint loss towards a fixed target
    target = torch.randn(3, *t_shape, generator=gen(7))
    opt = torch.optim.Adam(a.parameters(), lr=0.01)
    x = torch.randn(3, *s_shape, generator=gen(8))
    first = hint_loss(a(x), target).item()
    for _ in range(30):
        opt.zero_grad()
        hint_loss(a(x), target).backward()
        opt.step()
    assert hint_loss(a(x), target).item() < first


# --------------------------------------------------------------------------- at


def test_at_loss_matches_written_formula():
    f_s = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, -1.0]]]])  # 1x2x2x2
    f_t = torch.tensor([[[[2.0, 0.0], [0.0, 0.0]]]])  # 1x1x2x2
    q_s = torch.tensor([1.0, 0.0, 0.0, 1.0])  # mean over 2 channels of f^2
    q_s = q_s / q_s.norm()
    q_t = torch.tensor([4.0, 0.0, 0.0, 0.0]) / 4.0
    assert at_loss(f_s, f_t).item() == pytest.approx(float(((q_s - q_t) ** 2).mean()))
    assert attention_map(f_s)[0].tolist() == pytest.approx(q_s.tolist())


def test_at_loss_properties():
    f = torch.randn(4, 6, 8, 8, generator=gen(9))
    assert at_loss(f, f.clone()).item() < 1e-10
    perm = f[:, torch.randperm(6, generator=gen(10))]
    assert at_loss(3.0 * perm, f).item() < 1e-10  # channel order and scale do not matter
    assert at_loss(f[:, :2], torch.randn(4, 16, 8, 8, generator=gen(11))).item() > 0
    # a finer student map is pooled to the teacher's resolution
    big = f.repeat_interleave(2, 2).repeat_interleave(2, 3)
    assert at_loss(big, f).item() < 1e-10 and at_loss(f, big).item() < 1e-10


def test_at_pairs_stages_by_resolution():
    s = {"s0": (4, 4), "s1": (2, 2)}
    t = {"t0": (4, 4), "t1": (2, 2), "t2": (2, 2)}
    assert pair_by_resolution(s, t) == [("s0", "t0"), ("s1", "t2")]
    assert pair_by_resolution({"a": (3, 3)}, {"b": (4, 4)}) == [("a", "b")]


# --------------------------------------------------------------------------- rkd


def test_rkd_matches_written_formula():
    e_s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    e_t = torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [2.0, 0.0, 0.0]])

    def dist(e):
        n = len(e)
        d = [[float((e[i] - e[j]).norm()) for j in range(n)] for i in range(n)]
        mu = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return torch.tensor(d) / mu

    def ang(e):
        n = len(e)
        out = torch.zeros(n, n, n)
        for j, i, k in itertools.product(range(n), repeat=3):
            a, b = e[i] - e[j], e[k] - e[j]
            if a.norm() > 0 and b.norm() > 0:
                out[j, i, k] = a @ b / (a.norm() * b.norm())
        return out

    def huber(a, b):
        d = (a - b).abs()
        return float(torch.where(d < 1, 0.5 * d * d, d - 0.5).mean())

    assert torch.allclose(normalized_distances(e_s), dist(e_s), atol=1e-5)
    assert torch.allclose(angles(e_s), ang(e_s), atol=1e-5)
    assert rkd_distance_loss(e_s, e_t).item() == pytest.approx(
        huber(dist(e_s), dist(e_t)), rel=1e-5
    )
    assert rkd_angle_loss(e_s, e_t).item() == pytest.approx(huber(ang(e_s), ang(e_t)), rel=1e-5)


def test_rkd_is_invariant_to_similarity_transforms_of_the_embedding():
    t = torch.randn(10, 6, generator=gen(12))
    # student: teacher rotated into a bigger space, scaled and shifted -> same relations
    s = 2.5 * torch.cat([t, torch.zeros(10, 4)], 1) @ orthogonal(10) + 3.0
    assert rkd_distance_loss(s, t).item() < 1e-6 and rkd_angle_loss(s, t).item() < 1e-6
    other = torch.randn(10, 6, generator=gen(13))
    assert rkd_distance_loss(other, t).item() > 1e-3 and rkd_angle_loss(other, t).item() > 1e-3
    assert rkd_distance_loss(s[:1], t[:1]).item() == 0  # a 1-sample batch has no relations


# --------------------------------------------------------------------------- sp


def test_sp_matches_written_formula():
    f_s = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    f_t = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 1.0]])

    def g(f):
        gram = [[float(f[i] @ f[j]) for j in range(2)] for i in range(2)]
        return [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in gram]

    gs, gt = g(f_s), g(f_t)
    expected = sum((gs[i][j] - gt[i][j]) ** 2 for i in range(2) for j in range(2)) / 4
    assert sp_loss(f_s, f_t).item() == pytest.approx(expected, rel=1e-6)


def test_sp_properties():
    t = torch.randn(8, 4, 3, 3, generator=gen(14))
    flat = t.flatten(1)
    rotated = 7.0 * flat @ orthogonal(36, seed=1)  # same similarities in another basis/scale
    assert sp_loss(rotated, t).item() < 1e-10
    other = torch.randn(8, 20, generator=gen(15))
    assert sp_loss(other, t).item() > 1e-4
    assert sp_loss(other, t).item() == pytest.approx(sp_loss(t, other).item())  # symmetric


# --------------------------------------------------------------------------- crd


def test_nce_loss_matches_written_formula():
    pos = torch.tensor([0.5, 2.0])
    neg = torch.tensor([[0.1, 0.3, 0.2], [1.0, 0.05, 0.4]])
    n, k = 10, 3
    keep = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    total = 0.0  # by hand, in Python floats: pytest.approx needs numbers, not 0-d tensors
    pos_f = pos.tolist()
    for b in range(2):
        total += math.log(pos_f[b] / (pos_f[b] + k / n + 1e-7))
        kept = float(keep[b].sum())  # the kept negatives stand for all K draws
        for j in range(k):
            term = math.log((k / n) / (float(neg[b, j]) + k / n + 1e-7))
            total += float(keep[b, j]) * k / kept * term
    assert isinstance(total, float)
    assert nce_loss(pos, neg, n, keep).item() == pytest.approx(-total / 2, rel=1e-6)


def test_nce_negative_term_does_not_shrink_with_same_class_draws():
    """Masking same-class draws must not scale the negative term by (N - N_y) / N: with K
    draws of which some are masked, the term equals that of K other-class draws."""
    pos = torch.tensor([1.0, 1.0])
    neg = torch.full((2, 10), 0.3)
    keep = torch.ones(2, 10)
    keep[1, :3] = 0  # row 1 drew 3 negatives of its own class
    per_row = [nce_loss(pos[i : i + 1], neg[i : i + 1], 100, keep[i : i + 1]) for i in range(2)]
    assert per_row[0].item() == pytest.approx(per_row[1].item(), rel=1e-6)


def test_nce_loss_rewards_the_positive_and_punishes_negatives():
    pos, neg = torch.tensor([1.0]), torch.tensor([[0.5, 0.5]])
    base = nce_loss(pos, neg, 100).item()
    assert nce_loss(pos * 10, neg, 100).item() < base
    assert nce_loss(pos, neg * 10, 100).item() > base
    drop = torch.tensor([[1.0, 0.0]])
    assert nce_loss(pos, torch.tensor([[0.5, 99.0]]), 100, drop).item() == pytest.approx(
        nce_loss(pos, neg, 100, drop).item()
    )  # a masked negative has no effect


def _crd(student, teacher, n=40, k=16, seed=0):
    labels = torch.arange(n) % 4
    opts = CRDOptions(nce_k=k, feat_dim=8)
    return CRD(student, teacher, opts, (5, 5), labels, torch.arange(n), seed)


def test_crd_is_symmetric_when_student_is_teacher_and_keeps_banks_out_of_the_optimizer():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4))
    net.kd_stages, net.kd_head = ["0"], "2"
    twin = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4))
    twin.load_state_dict(net.state_dict())
    twin.kd_stages, twin.kd_head = ["0"], "2"
    d = _crd(twin, net)
    d.embed_t.load_state_dict(d.embed_s.state_dict())
    d.memory_t.copy_(d.memory_s)
    x, idx = torch.randn(6, 3, generator=gen(16)), torch.arange(6)
    y = d.labels[idx]
    with capture(d.student, [], True) as s, capture(d.teacher, [], True) as t:
        d.student(x), d.teacher(x)
    d.eval()  # no memory update / Z stays unset: score both directions with the same Z
    d.z.fill_(1.0)
    out = d.feature_losses(s, t, y, idx)["crd"]
    # both directions see identical embeddings and banks: the total is twice one of them
    v = F.normalize(d.embed_s(s.embedding), dim=1)
    neg = d.negatives()
    keep = (d.labels[neg][None] != y[:, None]).float()
    e = torch.exp(
        torch.cat([(v * d.memory_s[idx]).sum(1, keepdim=True), v @ d.memory_s[neg].t()], 1) / 0.07
    )
    one = nce_loss(e[:, 0], e[:, 1:], 40, keep)
    assert out.item() == pytest.approx(0.8 * 2 * one.item(), rel=1e-5)
    trainable = {id(p) for p in d.trainable_parameters()}
    assert {id(p) for p in d.embed_s.parameters()} <= trainable
    assert {id(p) for p in d.embed_t.parameters()} <= trainable
    assert not trainable & {id(p) for p in d.teacher.parameters()}
    assert "memory_s" in dict(d.named_buffers()) and not d.memory_s.requires_grad


def test_crd_memory_update_negatives_and_cap():
    net = model("mlp", hidden=[5])
    net2 = model("mlp", hidden=[5])
    d = _crd(net, net2, n=40, k=100)
    assert d.k == 39  # capped at the data size - 1
    d.train()
    idx = torch.tensor([3, 7])
    x = torch.randn(2, 1, 8, 8, generator=gen(17))
    before = d.memory_s.clone()
    n0 = d.negatives().clone()
    _, losses = d(x, d.labels[idx], idx, None)
    assert torch.isfinite(losses["crd"]) and (d.z > 0).all()
    changed = (d.memory_s != before).any(1).nonzero().flatten().tolist()
    assert changed == [3, 7]
    assert torch.allclose(d.memory_s[idx].norm(dim=1), torch.ones(2))
    # negatives depend on (seed, step) only: a restored state replays the same draw
    buf = io.BytesIO()
    torch.save(d.state_dict(), buf)  # as the training checkpoint does, loaded weights_only
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    n1 = d.negatives()
    assert not torch.equal(n0, n1)
    d2 = _crd(model("mlp", hidden=[5]), model("mlp", hidden=[5]), n=40, k=100)
    d2.load_state_dict(state)
    assert torch.equal(d2.negatives(), n1) and not METHODS["crd"].cacheable


# --------------------------------------------------------------------------- distillers


def _ctx(student_name="cnn", **skw):
    data = SimpleNamespace(
        in_shape=(1, 8, 8), student_idx=torch.arange(30), y_train=torch.arange(30) % 10
    )
    teacher = model("cnn", channels=[8, 16, 32])
    return SimpleNamespace(
        data=data, new_student=lambda: model(student_name, **skw), teacher=lambda: teacher
    )


@pytest.mark.parametrize(
    "name,student",  # at needs spatial maps: its mlp case is the ConfigError test below
    [
        (n, s)
        for n in ["fitnet", "at", "rkd", "sp", "crd"]
        for s in ["cnn", "mlp"]
        if (n, s) != ("at", "mlp")
    ],
)
def test_feature_methods_train_student_and_adapters_only(name, student):
    cfg = OmegaConf.create({"method": {"name": name}, "seed": 0, "T": 4.0})
    d = METHODS[name].build(cfg, _ctx(student))
    d.train()
    assert not d.teacher.training and not METHODS[name].cacheable
    x = torch.randn(6, 1, 8, 8, generator=gen(18))
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    logits, losses = d(x, y, torch.arange(6), None)
    assert logits.shape == (6, 10) and "hard" in losses and len(losses) >= 2
    sum(losses.values()).backward()
    assert all(p.grad is None for p in d.teacher.parameters())
    assert all(p.grad is not None for p in d.student.parameters() if p.requires_grad)
    extra = [p for n, p in d.named_parameters() if not n.startswith(("student.", "teacher."))]
    assert {id(p) for p in extra} <= {id(p) for p in d.trainable_parameters()}


def test_at_refuses_an_mlp_before_training():
    cfg = OmegaConf.create(
        {
            "method": {"name": "at"},
            "dataset": {"name": "digits"},
            "student": OmegaConf.structured(ModelConfig(name="mlp")),
            "teacher": OmegaConf.structured(ModelConfig(name="cnn")),
        }
    )
    with pytest.raises(ConfigError, match=r"spatial.*student 'mlp'.*cnn"):
        METHODS["at"].check_config(cfg)


# --------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    return tmp_path_factory.mktemp("store")  # one teacher for all smoke runs


LOSS_COLUMNS = {
    "dkd": ["loss_tckd", "loss_nckd"],
    "fitnet": ["loss_hint"],
    "at": ["loss_at"],
    "rkd": ["loss_rkd_distance", "loss_rkd_angle"],
    "sp": ["loss_sp"],
    "crd": ["loss_crd"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", MY_METHODS)
def test_smoke_pipeline(run_kdrun, tmp_path, shared_store, name):
    r = run_kdrun(
        "experiment=smoke", f"method={name}", run_dir=tmp_path / "run", store=shared_store
    )
    assert r.returncode == 0, r.stderr[-2000:]
    m = read_json(tmp_path / "run" / "metrics.json")
    assert m["status"] == "completed" and m["method"] == name
    assert 0.1 < m["student"]["test_acc"] <= 1.0  # better than chance on 10 classes
    with open(tmp_path / "run" / "history.csv") as f:
        rows = [row for row in csv.DictReader(f) if row["stage"] == "student"]
    assert len(rows) == 2  # the smoke recipe's two epochs
    for col in LOSS_COLUMNS[name]:  # each named loss part is logged, and finite
        assert all(math.isfinite(float(row[col])) for row in rows), col


@pytest.mark.slow
def test_smoke_logit_standardization(run_kdrun, tmp_path, shared_store):
    r = run_kdrun(
        "experiment=smoke",
        "method.logit_standardization=true",
        "T=2",
        run_dir=tmp_path / "run",
        store=shared_store,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert read_json(tmp_path / "run" / "metrics.json")["config"]["method"] == {
        "name": "kd",
        "logit_standardization": True,
    }


@pytest.mark.slow
def test_cli_at_with_mlp_student_is_one_line_error(run_kdrun, tmp_path, shared_store):
    r = run_kdrun(
        "experiment=smoke", "method=at", "student=mlp", run_dir=tmp_path / "run", store=shared_store
    )
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "spatial" in err[0] and "Traceback" not in r.stderr, r.stderr
    assert "epoch" not in r.stdout + r.stderr  # refused before anything trained
