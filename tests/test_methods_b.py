"""multi_teacher, takd, dml, born_again and the CIFAR model families.

Losses against their written formulas on hand-made tensors, their defining properties,
config checks, a forward of every CIFAR model, and one smoke run of the CLI per method.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from kdrun.config import ModelConfig, config_dir, register_configs
from kdrun.errors import ConfigError
from kdrun.experiments import validate
from kdrun.methods.dml import mutual_losses
from kdrun.methods.losses import kd_loss
from kdrun.methods.model_options import midway_overrides
from kdrun.methods.multi_teacher import ensemble_logits, member_configs
from kdrun.methods.takd import assistant_config
from kdrun.models import build_model, count_params
from kdrun.models.cifar import CIFAR_ARCHS
from tests.conftest import read_json

register_configs()


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def kl_by_hand(p: torch.Tensor, q: torch.Tensor) -> float:
    """sum_c p_c log(p_c / q_c), averaged over rows."""
    return sum(float((p[i] * (p[i].log() - q[i].log())).sum()) for i in range(len(p))) / len(p)


# ---------------------------------------------------------------- multi_teacher


def test_ensemble_probs_is_the_mean_distribution_at_T():
    z1 = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    z2 = torch.tensor([[-1.0, 1.0, 0.0], [1.0, -2.0, 0.0]])
    T = 2.0
    expected = (torch.softmax(z1 / T, 1) + torch.softmax(z2 / T, 1)) / 2
    out = ensemble_logits([z1, z2], T, "probs")
    assert torch.allclose(torch.softmax(out / T, 1), expected, atol=1e-6)
    # the KD loss against the ensemble is alpha T^2 KL(mean distribution || student)
    s = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, -1.0]])
    y = torch.tensor([0, 2])
    soft = kd_loss(s, out, y, T, 0.9)["soft"].item()
    assert soft == pytest.approx(0.9 * T * T * kl_by_hand(expected, torch.softmax(s / T, 1)))


def test_ensemble_logits_is_the_mean_logit():
    z1, z2, z3 = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 3.0]]), torch.tensor([[0.0, 0.0]])
    assert torch.equal(ensemble_logits([z1, z2, z3], 4.0, "logits"), torch.tensor([[1.0, 1.0]]))


@pytest.mark.parametrize("average", ["probs", "logits"])
def test_identical_teachers_are_one_teacher(average):
    z = torch.randn(5, 7) * 3
    T = 4.0
    out = ensemble_logits([z, z.clone(), z.clone()], T, average)
    assert torch.allclose(torch.softmax(out / T, 1), torch.softmax(z / T, 1), atol=1e-6)
    s, y = torch.randn(5, 7), torch.randint(0, 7, (5,))
    assert kd_loss(s, out, y, T, 0.9)["soft"].item() == pytest.approx(
        kd_loss(s, z, y, T, 0.9)["soft"].item(), rel=1e-5
    )


def test_mean_distribution_lies_between_its_members():
    zs = [torch.randn(16, 10) * 5 for _ in range(4)]
    T = 3.0
    p = torch.softmax(ensemble_logits(zs, T, "probs") / T, 1)
    members = torch.stack([torch.softmax(z / T, 1) for z in zs])
    assert torch.all(p >= members.min(0).values - 1e-6)
    assert torch.all(p <= members.max(0).values + 1e-6)
    # extreme logits stay finite (computed in log space)
    big = [torch.tensor([[1e4, -1e4]]), torch.tensor([[-1e4, 1e4]])]
    assert torch.isfinite(ensemble_logits(big, 1.0, "probs")).all()


def test_member_configs_overlay_the_teacher_and_reject_typos():
    cfg = compose_cfg(
        "method=multi_teacher",
        "teacher=cnn",
        "method.teachers=[{name: mlp, hidden: [32]},{}]",
        "dataset.unlabelled_transfer=false",  # its teachers learn the students' labels
    )
    validate(cfg)
    members = member_configs(cfg)
    assert [m.name for m in members] == ["mlp", "cnn"]
    assert list(members[0].hidden) == [32] and members[0].train.epochs == cfg.teacher.train.epochs
    assert len(member_configs(compose_cfg("method=multi_teacher", "method.size=5"))) == 4
    for bad, msg in [
        ("method.teachers=[{hiden: [32]}]", "hiden"),
        ("method.teachers=[{name: nope}]", "unknown model 'nope'"),
        ("method.average=median", "method.average"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            validate(compose_cfg("method=multi_teacher", "dataset.unlabelled_transfer=false", bad))


# ---------------------------------------------------------------- dml


def test_dml_losses_match_the_written_formula():
    z0 = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    z1 = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, -2.0]])
    z2 = torch.tensor([[2.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 1])
    T, w = 2.0, 0.5
    parts = mutual_losses([z0, z1, z2], y, T, w)
    q = [torch.softmax(z / T, 1) for z in (z0, z1, z2)]
    for k, z in enumerate((z0, z1, z2)):
        ce = -sum(math.log(float(torch.softmax(z[i], 0)[y[i]])) for i in range(2)) / 2
        kl = sum(kl_by_hand(q[j], q[k]) for j in range(3) if j != k) / 2
        assert parts[f"hard_p{k}"].item() == pytest.approx(ce, rel=1e-5)
        assert parts[f"kl_p{k}"].item() == pytest.approx(w * T * T * kl, rel=1e-5)


def test_dml_identical_peers_is_cross_entropy_only():
    z = torch.randn(6, 5)
    y = torch.randint(0, 5, (6,))
    parts = mutual_losses([z, z.clone()], y, 1.0, 1.0)
    assert parts["kl_p0"].abs().item() < 1e-6 and parts["kl_p1"].abs().item() < 1e-6
    assert sum(parts.values()).item() == pytest.approx(2 * F.cross_entropy(z, y).item(), rel=1e-5)


def test_dml_mimicry_moves_only_the_learner():
    z0 = torch.randn(4, 5, requires_grad=True)
    z1 = torch.randn(4, 5, requires_grad=True)
    kl0 = mutual_losses([z0, z1], torch.zeros(4, dtype=torch.long), 1.0, 1.0)["kl_p0"]
    g0, g1 = torch.autograd.grad(kl0, [z0, z1], allow_unused=True)
    assert g1 is None and g0.abs().sum() > 0  # the peer is a target, not moved by this term


def test_dml_and_born_again_options_are_checked():
    for overrides, msg in [
        (("method=dml", "method.peers=1"), "method.peers"),
        (("method=dml", "T=0"), "T must be > 0"),
        (("method=born_again", "method.generations=0"), "method.generations"),
        (("method=takd", "method.assistant={name: nope}"), "unknown model"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            validate(compose_cfg(*overrides))


# ---------------------------------------------------------------- takd


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (("teacher=resnet56", "student=resnet20"), ("resnet56", {"depth": 38})),
        (("teacher=vgg13", "student=vgg8"), ("vgg13", {"depth": 11})),
        (("teacher=wrn_40_2", "student=wrn_40_1"), ("wrn_40_2", {"depth": 34})),  # one step down
        (
            ("teacher=cnn", "teacher.channels=[32,64,128]"),
            ("cnn", {"channels": [16, 32, 64], "width": 32}),
        ),
        (("teacher=mlp", "student=mlp", "student.hidden=[64,64]"), ("mlp", {"hidden": [277, 277]})),
    ],
)
def test_default_assistant_is_between_teacher_and_student(overrides, expected):
    cfg = compose_cfg("method=takd", *overrides)
    over = midway_overrides(cfg.teacher, cfg.student)
    assert {k: over[k] for k in expected[1]} == expected[1]
    a = assistant_config(cfg)
    assert a.name == expected[0] and a.checkpoint is None
    if cfg.teacher.name in CIFAR_ARCHS or cfg.teacher.name == cfg.student.name:
        # one family: "between" is measurable in parameters
        t, s, m = (build_model(c, (3, 32, 32), 10) for c in (cfg.teacher, cfg.student, a))
        assert count_params(s) < count_params(m) < count_params(t)


# ---------------------------------------------------------------- CIFAR models

PUBLISHED_PARAMS_M = {  # CIFAR-100 parameter counts as in CRD (Tian et al. 2020) / RepDistiller
    "resnet20": 0.28,
    "resnet32": 0.47,
    "resnet56": 0.86,
    "resnet110": 1.74,
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "wrn_16_2": 0.70,
    "wrn_40_1": 0.57,
    "wrn_40_2": 2.26,
    "vgg8": 3.96,
    "vgg13": 9.46,
}


def model_cfg(name: str, **kw):
    return OmegaConf.structured(ModelConfig(name=name, **kw))


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS_M))
def test_parameter_counts_match_the_benchmark(name):
    m = build_model(model_cfg(name), (3, 32, 32), 100)
    assert count_params(m) / 1e6 == pytest.approx(PUBLISHED_PARAMS_M[name], abs=0.011)


@pytest.mark.parametrize("name", sorted(CIFAR_ARCHS))
def test_cifar_model_forward_and_hooks_on_every_input_size(name):
    for shape in [(3, 32, 32), (1, 28, 28), (1, 8, 8)]:
        torch.manual_seed(0)
        m = build_model(model_cfg(name, dropout=0.1), shape, 10)
        mods = dict(m.named_modules())
        assert all(s in mods for s in m.kd_stages) and isinstance(mods[m.kd_head], torch.nn.Linear)
        seen: list[torch.Size] = []
        for s in m.kd_stages:
            mods[s].register_forward_hook(lambda _m, _i, o, seen=seen: seen.append(o.shape))
        out = m(torch.randn(2, *shape))
        assert out.shape == (2, 10) and torch.isfinite(out).all()
        assert len(seen) == len(m.kd_stages) and all(s[0] == 2 and s[2] >= 1 for s in seen)


def test_depth_and_widen_factor_adjust_the_named_model():
    base = count_params(build_model(model_cfg("resnet20"), (3, 32, 32), 10))
    assert count_params(build_model(model_cfg("resnet20", depth=32), (3, 32, 32), 10)) == (
        count_params(build_model(model_cfg("resnet32"), (3, 32, 32), 10))
    )
    assert count_params(build_model(model_cfg("resnet20", widen_factor=2), (3, 32, 32), 10)) > (
        3 * base
    )
    with pytest.raises(ConfigError, match="6n\\+2"):
        build_model(model_cfg("resnet20", depth=21), (3, 32, 32), 10)


# ---------------------------------------------------------------- the pipeline, per method


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    return tmp_path_factory.mktemp("store")  # one teacher for every smoke run below


def smoke(run_kdrun, tmp_path, store, name: str, *extra: str) -> dict:
    run_dir = tmp_path / name
    # a narrow teacher: born_again and multi_teacher train two more models of its size
    r = run_kdrun(
        "experiment=smoke",
        f"method={name}",
        "teacher.channels=[8,16]",
        "runtime.num_threads=1",
        *extra,
        run_dir=run_dir,
        store=store,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    m = read_json(run_dir / "metrics.json")
    assert m["status"] == "completed" and m["method"] == name
    assert 0 <= m["student"]["test_acc"] <= 1 and m["kd_gain"] is not None
    return m


def history_stages(path) -> set[str]:
    return {line.split(",", 1)[0] for line in path.read_text().splitlines()[1:]}


@pytest.mark.slow
def test_smoke_multi_teacher(run_kdrun, tmp_path, shared_store):
    m = smoke(run_kdrun, tmp_path, shared_store, "multi_teacher")
    ens = m["ensemble"]
    assert ens["members"] == 3 and len(ens["member_test_acc"]) == 3
    assert ens["member_test_acc"][0] == m["teacher"]["test_acc"]
    assert set(m["extra_models"]) == {"teacher1", "teacher2"}
    assert {"teacher", "teacher1", "teacher2"} <= history_stages(
        tmp_path / "multi_teacher" / "history.csv"
    )


@pytest.mark.slow
def test_smoke_takd(run_kdrun, tmp_path, shared_store):
    m = smoke(run_kdrun, tmp_path, shared_store, "takd")
    a = m["extra_models"]["assistant"]
    assert a["model"] == "cnn" and a["params"] < m["teacher"]["params"]
    assert "assistant" in history_stages(tmp_path / "takd" / "history.csv")


@pytest.mark.slow
def test_smoke_dml_has_no_teacher(run_kdrun, tmp_path, shared_store):
    m = smoke(run_kdrun, tmp_path, shared_store, "dml")
    assert m["teacher"] is None and m["student"]["agreement"] is None
    assert [p["peer"] for p in m["peers"]] == [0, 1]
    assert m["peers"][0]["test_acc"] == pytest.approx(m["student"]["test_acc"])
    assert not (tmp_path / "dml" / "checkpoints" / "teacher.pt").exists()
    assert "teacher" not in history_stages(tmp_path / "dml" / "history.csv")
    cols = (tmp_path / "dml" / "history.csv").read_text().splitlines()[0].split(",")
    assert {"loss_hard_p0", "loss_kl_p0", "loss_hard_p1", "loss_kl_p1"} <= set(cols)


@pytest.mark.slow
def test_smoke_born_again_two_generations(run_kdrun, tmp_path, shared_store):
    m = smoke(run_kdrun, tmp_path, shared_store, "born_again", "method.generations=2")
    assert [g["generation"] for g in m["generations"]] == [0, 1, 2]
    assert m["generations"][0]["test_acc"] == m["teacher"]["test_acc"]
    assert m["extra_models"]["gen2"]["model"] == m["teacher"]["model"]
