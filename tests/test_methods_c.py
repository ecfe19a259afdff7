"""dist, nkd, ctkd, mlkd, reviewkd, and the crd/at/fitnet fidelity fixes.

Per loss: a test against its written formula on small hand-made tensors and a property test;
each new method through the whole CLI on the smoke config.
"""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from kdrun.config import ModelConfig
from kdrun.engine.loop import planned_steps
from kdrun.errors import ConfigError
from kdrun.methods import METHODS
from kdrun.methods.ctkd import CTKD, CTKDOptions, cosine_lambda, kd_per_sample, reverse_grad
from kdrun.methods.dist import dist_loss, inter_class_relation, intra_class_relation
from kdrun.methods.fitnet import ConvReg
from kdrun.methods.mlkd import (
    MLKD,
    MLKDOptions,
    batch_loss,
    class_loss,
    confidence_masks,
    instance_loss,
    mlkd_loss,
    strong_view,
)
from kdrun.methods.nkd import nkd_loss
from kdrun.methods.reviewkd import ABF, hcl_pair
from kdrun.models import build_model
from tests.conftest import read_json

NEW_METHODS = ["dist", "nkd", "ctkd", "mlkd", "reviewkd"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def model(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    return build_model(OmegaConf.structured(ModelConfig(name=name, **kw)), (1, 8, 8), 10)


def pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum((x - ma) ** 2 for x in a))
    nb = math.sqrt(sum((y - mb) ** 2 for y in b))
    return cov / (na * nb)


# --------------------------------------------------------------------------- dist


def test_dist_matches_written_formula():
    s = torch.tensor([[2.0, 0.5, -1.0], [0.3, 0.2, 1.5], [1.0, -1.0, 0.0]])
    t = torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.5, 0.5, 2.0]])
    T, beta, gamma = 2.0, 1.5, 0.5
    ps, pt = torch.softmax(s / T, 1).tolist(), torch.softmax(t / T, 1).tolist()
    inter = 1 - sum(pearson(ps[i], pt[i]) for i in range(3)) / 3
    cols = [[r[c] for r in ps] for c in range(3)], [[r[c] for r in pt] for c in range(3)]
    intra = 1 - sum(pearson(cols[0][c], cols[1][c]) for c in range(3)) / 3
    parts = dist_loss(s, t, T, beta, gamma)
    assert parts["inter"].item() == pytest.approx(beta * T * T * inter, rel=1e-5)
    assert parts["intra"].item() == pytest.approx(gamma * T * T * intra, rel=1e-5)


def test_dist_relations_ignore_affine_maps_and_vanish_at_equality():
    p = torch.softmax(torch.randn(6, 10, generator=gen(1)), 1)
    scale = torch.rand(6, 1, generator=gen(2)) + 0.5
    # per-sample positive scale and shift: the same inter-class relation
    assert inter_class_relation(p * scale + 3.0, p).item() < 1e-6
    # per-class scale/shift (across the batch): the same intra-class relation
    col_scale = torch.rand(1, 10, generator=gen(4)) + 0.5
    col_shift = torch.randn(1, 10, generator=gen(5))
    assert intra_class_relation(p * col_scale + col_shift, p).item() < 1e-6
    assert inter_class_relation(p * col_scale, p).item() > 1e-3  # but not the other relation
    assert inter_class_relation(1 - p, p).item() == pytest.approx(2.0, abs=1e-5)  # anti-correlated
    z = torch.randn(6, 10, generator=gen(3))
    zero = dist_loss(z, z.clone(), 1.0, 1.0, 1.0)  # eps 1e-8 against the centred norms
    assert zero["inter"].item() < 1e-5 and zero["intra"].item() < 1e-5


# --------------------------------------------------------------------------- nkd


def test_nkd_matches_written_formula():
    s = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.3, 0.2, 1.5, -0.5]])
    t = torch.tensor([[3.0, 1.0, 0.0, -2.0], [0.0, 1.0, 2.0, 0.5]])
    y = torch.tensor([0, 2])
    T, gamma = 2.0, 1.5
    target = non = 0.0
    for i in range(2):
        g = int(y[i])
        target += -float(torch.softmax(t[i], 0)[g] * torch.log_softmax(s[i], 0)[g]) / 2
        o = [c for c in range(4) if c != g]
        qs, qt = torch.softmax(s[i, o] / T, 0), torch.softmax(t[i, o] / T, 0)
        non += -gamma * T * T * float((qt * qs.log()).sum()) / 2
    parts = nkd_loss(s, t, y, T, gamma)
    assert parts["target"].item() == pytest.approx(target, rel=1e-5)
    assert parts["non_target"].item() == pytest.approx(non, rel=1e-5)


def test_nkd_non_target_term_is_normalised_and_stationary_at_the_teacher():
    t = torch.randn(5, 10, generator=gen(4)) * 2
    y = torch.randint(0, 10, (5,), generator=gen(5))
    s = t.clone().requires_grad_(True)
    nkd_loss(s, t, y, 3.0, 1.5)["non_target"].backward()
    assert s.grad.abs().max().item() < 1e-6  # minimum of the cross-entropy at q_s = q_t
    # the target logit does not enter the normalised non-target distribution
    moved = t.clone()
    moved[torch.arange(5), y] += 7.0
    a, b = nkd_loss(moved, t, y, 3.0, 1.5), nkd_loss(t, t, y, 3.0, 1.5)
    assert a["non_target"].item() == pytest.approx(b["non_target"].item(), rel=1e-6)
    assert a["target"].item() < b["target"].item()  # but it raises p_s[y]


# --------------------------------------------------------------------------- ctkd


def test_ctkd_curriculum_and_reversal_match_their_formulas():
    assert cosine_lambda(0, 10, 1.0) == 0.0
    assert cosine_lambda(1, 10, 1.0) == pytest.approx((1 - math.cos(math.pi / 10)) / 2)
    assert cosine_lambda(10, 10, 1.0) == pytest.approx(1.0)
    assert cosine_lambda(25, 10, 0.5) == pytest.approx(0.5)  # held after the curriculum
    x = torch.tensor([1.5, -2.0], requires_grad=True)
    y = reverse_grad(x, 0.3)
    assert torch.equal(y, x.detach())
    (y * torch.tensor([2.0, 5.0])).sum().backward()
    assert x.grad.tolist() == pytest.approx([-0.6, -1.5])
    s, t = torch.randn(4, 6, generator=gen(6)), torch.randn(4, 6, generator=gen(7))
    T = torch.full((4, 1), 3.0)
    pt = torch.softmax(t / 3, 1)
    kl = (pt * (pt.log() - torch.log_softmax(s / 3, 1))).sum(1) * 9
    assert torch.allclose(kd_per_sample(s, t, T), kl, atol=1e-5)


def test_ctkd_temperature_ascends_the_loss_the_student_descends():
    """theta's gradient is exactly minus lambda times the loss gradient: descending it ascends
    the KD term in T, while the student's gradient is the plain one."""
    s, t = nn.Linear(3, 5), nn.Linear(3, 5)
    d = CTKD(s, t, CTKDOptions(curriculum=4), 1.0, 5, steps_per_epoch=1, epochs=5)
    d.train()
    d.step.fill_(1)  # epoch 2: lambda = (1 - cos(pi / 2)) / 2 = 0.5
    x, y = torch.randn(8, 3, generator=gen(8)), torch.zeros(8, dtype=torch.long)
    _, losses = d(x, y, None, None)
    losses["soft"].backward()
    theta = d.temperature.theta.detach().clone().requires_grad_(True)
    T = (1 + 20 * torch.sigmoid(theta)).expand(8, 1)
    plain = kd_per_sample(s(x).detach(), t(x).detach(), T).mean()
    (g,) = torch.autograd.grad(plain, theta)
    assert d.temperature.theta.grad.item() == pytest.approx(-0.5 * g.item(), rel=1e-5)
    assert g.item() != 0
    row = d.epoch_metrics()
    assert row["T"] == pytest.approx(float(T[0])) and row["ctkd_lambda"] == pytest.approx(0.5)
    assert d.epoch_metrics()["T"] is None  # reset for the next epoch


def test_ctkd_instance_mode_and_dkd_base_train_the_temperature_module():
    d = CTKD(
        nn.Linear(3, 5),
        nn.Linear(3, 5),
        CTKDOptions(mode="instance", base="dkd"),
        0.9,
        5,
        steps_per_epoch=1,
        epochs=5,
    )
    d.train()
    d.step.fill_(3)  # past epoch 1: lambda > 0
    _, losses = d(torch.randn(6, 3, generator=gen(9)), torch.arange(6) % 5, None, None)
    assert set(losses) == {"hard", "tckd", "nckd"}
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in d.temperature.parameters())
    assert {id(p) for p in d.temperature.parameters()} <= {id(p) for p in d.trainable_parameters()}


# --------------------------------------------------------------------------- mlkd


def test_mlkd_levels_match_written_formulas():
    s = torch.tensor([[2.0, 0.5, -1.0], [0.3, 0.2, 1.5]])
    t = torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    T = 2.0
    ps, pt = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
    kl = float((pt * (pt.log() - ps.log())).sum()) / 2
    assert instance_loss(s, t, T).item() == pytest.approx(T * T * kl, rel=1e-5)
    gb = sum(float((pt[i] @ pt[j] - ps[i] @ ps[j]) ** 2) for i in range(2) for j in range(2))
    assert batch_loss(s, t, T).item() == pytest.approx(gb / 2, rel=1e-5)
    gc = sum(
        float((pt[:, a] @ pt[:, b] - ps[:, a] @ ps[:, b]) ** 2) for a in range(3) for b in range(3)
    )
    assert class_loss(s, t, T).item() == pytest.approx(gc / 3, rel=1e-5)
    # two samples, confidences 0.67 and 0.63 (T=1): the median keeps one of two -> 1/2
    m_i, m_c = confidence_masks(t)
    assert m_i.item() == 0.5 and m_c.item() == pytest.approx(2 / 3)


def test_mlkd_vanishes_at_equality_and_sums_over_temperatures():
    z = torch.randn(8, 10, generator=gen(10))
    assert all(v.item() < 1e-6 for v in mlkd_loss(z, z.clone(), [2.0, 4.0]).values())
    s = torch.randn(8, 10, generator=gen(11))
    two = mlkd_loss(s, z, [2.0, 4.0], mask=False)
    one = [mlkd_loss(s, z, [T], mask=False) for T in (2.0, 4.0)]
    for k in two:
        assert two[k].item() == pytest.approx(one[0][k].item() + one[1][k].item(), rel=1e-5)


def test_mlkd_strong_view_needs_the_teacher_and_replays_on_resume():
    net = lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # noqa: E731
    d = MLKD(net(), net(), MLKDOptions(strong_aug=True), 4.0, 0.9, seed=3)
    assert not d.cacheable and MLKD(net(), net(), MLKDOptions(), 4.0, 0.9, 0).cacheable
    d.train()
    x, y = torch.randn(4, 1, 8, 8, generator=gen(12)), torch.arange(4)
    _, losses = d(x, y, None, None)
    assert "instance_strong" in losses and all(torch.isfinite(v) for v in losses.values())
    state = d.state_dict()
    again = MLKD(net(), net(), MLKDOptions(strong_aug=True), 4.0, 0.9, seed=3)
    again.load_state_dict(state)
    assert again._step == 1


def _kl_t2(s, t, T):
    """T^2 * KL(softmax(t / T) || softmax(s / T)), written out: batch mean of the row sums."""
    ps, pt = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
    return T * T * (pt * (pt.log() - ps.log())).sum(1).mean()


@pytest.mark.parametrize("mode", ["authors", "strong"])
def test_mlkd_strong_total_matches_the_authors_loss_kd_strong_by_default(mode):
    torch.manual_seed(0)
    net = lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # noqa: E731
    student, teacher = net(), net()
    opts = MLKDOptions(strong_aug=True) if mode == "authors" else None
    opts = opts or MLKDOptions(strong_aug=True, strong_instance="strong")
    d = MLKD(student, teacher, opts, 4.0, 0.9, seed=5)
    d.train()
    x, y = torch.randn(6, 1, 8, 8, generator=gen(20)), torch.arange(6)
    _, losses = d(x, y, None, None)
    xs = strong_view(x, torch.Generator().manual_seed(5 * 1_000_003))  # step 0's view
    with torch.no_grad():
        w, t_w = student(x), teacher(x)
        s, t_s = student(xs), teacher(xs)
    # KD_ours.py loss_kd_strong: strong at T = 4 (the run's T), 3, 5; weak at T = 2 and 6
    strong_T, weak_T = ([4.0, 3.0, 5.0], [2.0, 6.0]) if mode == "authors" else ([4, 2, 3, 5, 6], [])
    expected = 0.9 * (
        sum(_kl_t2(s, t_s, T) for T in strong_T) + sum(_kl_t2(w, t_w, T) for T in weak_T)
    )
    assert losses["instance_strong"].item() == pytest.approx(float(expected), rel=1e-5)
    ce = F.cross_entropy(w, y) + F.cross_entropy(s, y)
    assert losses["hard"].item() == pytest.approx(0.1 * float(ce), rel=1e-5)


def test_mlkd_strong_instance_must_be_a_known_mode():
    cfg = OmegaConf.create({"method": {"name": "mlkd", "strong_instance": "weak"}})
    with pytest.raises(ConfigError, match="strong_instance"):
        MLKD.check_config(cfg)


# --------------------------------------------------------------------------- reviewkd


def test_hcl_matches_written_formula():
    fs = torch.randn(2, 3, 8, 8, generator=gen(13))
    ft = torch.randn(2, 3, 8, 8, generator=gen(14))

    def mse_at(size):
        return F.mse_loss(F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size))

    expected = (F.mse_loss(fs, ft) + mse_at(4) / 2 + mse_at(2) / 4 + mse_at(1) / 8) / 1.875
    assert hcl_pair(fs, ft).item() == pytest.approx(expected.item(), rel=1e-6)
    small = fs[:, :, :2, :2], ft[:, :, :2, :2]  # 2x2: only the 1x1 pool is below its size
    exp2 = F.mse_loss(*small) + F.mse_loss(small[0].mean((2, 3)), small[1].mean((2, 3))) / 2
    assert hcl_pair(*small).item() == pytest.approx(exp2.item() / 1.5, rel=1e-6)
    assert hcl_pair(fs, fs.clone()).item() == 0


def test_abf_fuses_with_attention_weights_summing_the_two_inputs():
    abf = ABF(4, 6, 5, fuse=True).eval()
    f, deeper = torch.randn(2, 4, 4, 4, generator=gen(15)), torch.randn(2, 6, 2, 2)
    out, res = abf(f, deeper, (8, 8))
    assert out.shape == (2, 5, 8, 8) and res.shape == (2, 6, 8, 8)
    x = abf.conv1(f)
    y = F.interpolate(deeper, size=(4, 4), mode="nearest")
    a = abf.att(torch.cat([x, y], 1))
    fused = F.interpolate(x * a[:, :1] + y * a[:, 1:], size=(8, 8), mode="nearest")
    assert torch.allclose(res, fused, atol=1e-6)


# --------------------------------------------------------------------------- the CLI


def _ctx(student_name="cnn"):
    data = SimpleNamespace(
        in_shape=(1, 8, 8),
        student_idx=torch.arange(30),
        y_train=torch.arange(30) % 10,
        num_classes=10,
    )
    teacher = model("cnn", channels=[8, 16, 32])
    return SimpleNamespace(
        data=data, new_student=lambda: model(student_name), teacher=lambda: teacher
    )


@pytest.mark.parametrize("name,student", [(n, s) for n in NEW_METHODS for s in ("cnn", "mlp")])
def test_new_methods_train_student_and_their_modules_only(name, student):
    cfg = OmegaConf.create(
        {
            "method": {"name": name},
            "seed": 0,
            "T": 4.0,
            "alpha": 0.9,
            "student": {"train": {"batch_size": 8, "epochs": 3, "steps_per_epoch": 0}},
        }
    )
    d = METHODS[name].build(cfg, _ctx(student))
    d.train()
    logits, losses = d(
        torch.randn(6, 1, 8, 8, generator=gen(16)), torch.arange(6), torch.arange(6), None
    )
    assert logits.shape == (6, 10) and "hard" in losses and len(losses) >= 2
    sum(losses.values()).backward()
    assert all(p.grad is None for p in d.teacher.parameters())
    assert all(p.grad is not None for p in d.student.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["dkd", "reviewkd", "ctkd"])
@pytest.mark.parametrize("cap,expected", [(0, 4), (3, 3), (9, 4)])
def test_epoch_schedules_count_the_loops_steps_per_epoch(name, cap, expected):
    """30 rows in batches of 8: 4 steps per epoch, or steps_per_epoch when that is fewer."""
    train = {"batch_size": 8, "epochs": 5, "steps_per_epoch": cap}
    cfg = OmegaConf.create(
        {"method": {"name": name}, "seed": 0, "T": 4.0, "alpha": 0.9, "student": {"train": train}}
    )
    d = METHODS[name].build(cfg, _ctx())
    assert d.steps_per_epoch == expected
    assert d.steps_per_epoch * 5 == planned_steps(cfg.student.train, 30)


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    return tmp_path_factory.mktemp("store")


LOSS_COLUMNS = {
    "dist": ["loss_inter", "loss_intra"],
    "nkd": ["loss_target", "loss_non_target"],
    "ctkd": ["loss_soft"],
    "mlkd": ["loss_instance", "loss_batch", "loss_class"],
    "reviewkd": ["loss_review"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW_METHODS)
def test_smoke_pipeline(run_kdrun, tmp_path, shared_store, name):
    r = run_kdrun(
        "experiment=smoke",
        f"method={name}",
        "runtime.num_threads=1",
        run_dir=tmp_path / "run",
        store=shared_store,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    m = read_json(tmp_path / "run" / "metrics.json")
    assert m["status"] == "completed" and m["method"] == name
    assert 0.1 < m["student"]["test_acc"] <= 1.0
    with open(tmp_path / "run" / "history.csv") as f:
        rows = [row for row in csv.DictReader(f) if row["stage"] == "student"]
    assert len(rows) == 2
    for col in LOSS_COLUMNS[name]:
        assert all(math.isfinite(float(row[col])) for row in rows), col
    if name == "ctkd":  # the learned temperature, per epoch
        assert all(1.0 <= float(row["T"]) <= 21.0 for row in rows)


# --------------------------------------------------------------------------- fidelity fixes


@pytest.mark.parametrize(
    "s_shape,t_shape,kind",
    [
        ((8, 8, 8), (16, 4, 4), nn.Conv2d),
        ((8, 4, 4), (16, 8, 8), nn.ConvTranspose2d),
        ((8, 7, 7), (16, 4, 4), nn.Conv2d),
        ((8, 4, 4), (4, 4, 4), nn.Conv2d),
    ],
)
def test_convreg_picks_repdistillers_conv_for_each_size_ratio(s_shape, t_shape, kind):
    reg = ConvReg(s_shape, t_shape)
    assert type(reg.conv) is kind
    if s_shape[1] not in (2 * t_shape[1], t_shape[1] // 2):  # the valid-conv case
        assert reg.conv.kernel_size == (1 + s_shape[1] - t_shape[1],) * 2
    x = torch.randn(3, *s_shape, generator=gen(17))
    out = reg(x)
    assert out.shape == (3, *t_shape) and (out >= 0).all()  # BN then ReLU
    reg.eval()
    assert torch.allclose(reg(x), F.relu(reg.bn(reg.conv(x))))


def test_convreg_refuses_what_it_cannot_map():
    with pytest.raises(ConfigError, match="cannot map a 3x3 student map onto a 8x8"):
        ConvReg((4, 3, 3), (4, 8, 8))
    with pytest.raises(ConfigError, match="spatial"):
        ConvReg((64,), (4, 8, 8))


def test_fitnet_regressor_option_builds_convreg():
    method = {"name": "fitnet", "regressor": "convreg"}
    cfg = OmegaConf.create({"method": method, "seed": 0, "T": 4})
    d = METHODS["fitnet"].build(cfg, _ctx("cnn"))
    assert isinstance(d.adapter, ConvReg)
    _, losses = d(torch.randn(4, 1, 8, 8, generator=gen(18)), torch.arange(4), None, None)
    assert torch.isfinite(losses["hint"])
