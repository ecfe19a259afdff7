"""The knowledge-graph task on a handful of triples: the data path and its bad inputs, the
PyKEEN models behind kdrun's interface, the filtered ranks against a brute-force count, the
losses (hand-computed values and properties), the paired bootstrap, and the task end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

pytest.importorskip("pykeen")

from kdrun.data.kg import load_kg_data, queries  # noqa: E402
from kdrun.errors import DataError  # noqa: E402
from kdrun.methods.kg import KGKD, DualDE  # noqa: E402
from kdrun.methods.kg_losses import (  # noqa: E402
    dualde_soft,
    dualde_structure,
    hard_loss,
    kd_loss,
)
from kdrun.models.kg import build_kg_model  # noqa: E402
from kdrun.report.evidence import score_evidence  # noqa: E402
from kdrun.tasks import task_named  # noqa: E402
from kdrun.tasks.kg import filtered_ranks  # noqa: E402
from tests.conftest import read_json  # noqa: E402

TRAIN = """a\tlikes\tb
b\tlikes\tc
c\tlikes\ta
a\tknows\tc
b\tknows\ta
d\tlikes\ta
d\tknows\tb
c\tknows\td
"""
VALID = "a\tlikes\tc\nb\tknows\td\n"
TEST = "d\tlikes\tb\nc\tlikes\tb\na\tknows\tb\n"


def _kg(tmp_path, train=TRAIN, valid=VALID, test=TEST):
    d = tmp_path / "kg"
    d.mkdir(exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        (d / f"{name}.txt").write_text(text)
    return d


def _cfg(path, **kw):
    return OmegaConf.create({"name": "kg", "path": str(path), "train_fraction": 1.0, **kw})


def _model(data, name="rotate", dim=4, seed=0):
    torch.manual_seed(seed)
    cfg = OmegaConf.create({"name": name, "dim": dim, "kwargs": {}})
    return build_kg_model(cfg, data.num_classes, data.num_relations, data.triples["train"])


# ---- data -------------------------------------------------------------------------------
def test_triples_become_tail_then_head_queries(tmp_path):
    data = load_kg_data(_cfg(_kg(tmp_path)))
    assert data.class_names == ["a", "b", "c", "d"]  # sorted labels, PyKEEN's numbering
    assert data.relation_names == ["knows", "likes"]
    n = len(data.triples["train"])
    assert n == 8 and data.x_train.shape == (16, 2) and data.num_classes == 4
    # a likes b: tail query (a, 2*likes) -> b, head query (b, 2*likes + 1) -> a
    assert data.x_train[0].tolist() == [0, 2] and int(data.y_train[0]) == 1
    assert data.x_train[n].tolist() == [1, 3] and int(data.y_train[n]) == 0
    assert data.x_test.shape == (6, 2)
    assert data.extra["triples"] == {"train": 8, "valid": 2, "test": 3}
    x, y = queries(torch.tensor([[2, 1, 3]]))
    assert x.tolist() == [[2, 2], [3, 3]] and y.tolist() == [3, 2]


def test_benchmark_files_come_from_pykeens_wheel():
    data = load_kg_data(OmegaConf.create({"name": "nations", "path": None}))
    assert (data.num_classes, data.num_relations) == (14, 55)
    assert data.extra["triples"] == {"train": 1592, "valid": 199, "test": 201}


def test_a_line_without_three_fields_names_file_and_line(tmp_path):
    d = _kg(tmp_path, train=TRAIN + "a\tlikes\n")
    with pytest.raises(DataError, match=r"train\.txt:9 has 2 tab-separated fields, not 3"):
        load_kg_data(_cfg(d))


def test_an_entity_unseen_in_training_is_refused(tmp_path):
    d = _kg(tmp_path, test=TEST + "a\tlikes\tzed\n")
    with pytest.raises(DataError, match=r"test\.txt: entity 'zed' \(triple 4\) never occurs"):
        load_kg_data(_cfg(d))
    d = _kg(tmp_path, test=TEST, valid="a\thates\tb\n")
    with pytest.raises(DataError, match=r"valid\.txt: relation 'hates'"):
        load_kg_data(_cfg(d))


def test_missing_files_path_and_image_options_fail_in_one_line(tmp_path):
    with pytest.raises(DataError, match=r"test\.txt does not exist"):
        d = _kg(tmp_path)
        (d / "test.txt").unlink()
        load_kg_data(_cfg(d))
    with pytest.raises(DataError, match="dataset=kg needs dataset.path=DIR"):
        load_kg_data(OmegaConf.create({"name": "kg", "path": None}))
    with pytest.raises(DataError, match="dataset.train_fraction is not supported"):
        load_kg_data(_cfg(_kg(tmp_path), train_fraction=0.5))
    with pytest.raises(DataError, match="holds no triples"):
        load_kg_data(_cfg(_kg(tmp_path, valid="\n")))


# ---- models -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rotate", "complex", "transe"])
def test_a_model_scores_every_candidate_of_each_query(tmp_path, name):
    data = load_kg_data(_cfg(_kg(tmp_path)))
    m = _model(data, name)
    scores = m(data.x_train)
    assert scores.shape == (16, 4)
    picked = scores.gather(1, data.y_train[:, None]).squeeze(1)
    torch.testing.assert_close(m.triple_scores(data.x_train, data.y_train), picked)
    width = 8 if name in ("rotate", "complex") else 4  # complex: real and imaginary parts
    assert m.entity_vectors(torch.tensor([0, 1])).shape == (2, width)


def test_rotate_relations_stay_on_the_unit_circle_while_training(tmp_path):
    data = load_kg_data(_cfg(_kg(tmp_path)))
    m = _model(data)
    opt = torch.optim.SGD(m.parameters(), lr=5.0)
    for _ in range(2):  # forward in training mode applies PyKEEN's constraint first
        opt.zero_grad()
        hard_loss(m(data.x_train), data.y_train).backward()
        opt.step()
    rel = m.kge.relation_representations[0](indices=None)
    assert not torch.allclose(rel.abs(), torch.ones_like(rel.abs()), atol=1e-4)  # off after a step
    m.constrained()
    rel = m.kge.relation_representations[0](indices=None)
    torch.testing.assert_close(rel.abs(), torch.ones_like(rel.abs()))


# ---- filtered evaluation ----------------------------------------------------------------
def _brute_force_rr(model, data, split, filters):
    """Realistic filtered reciprocal ranks, counted by hand from the model's scores."""
    known = {tuple(t) for s in filters for t in data.triples[s].tolist()}
    out = []
    with torch.no_grad():
        for h, r, t in data.triples[split].tolist():
            rr = []
            for e, q, ans, side in ((h, 2 * r, t, "tail"), (t, 2 * r + 1, h, "head")):
                s = model.eval()(torch.tensor([[e, q]]))[0]
                others = [
                    c
                    for c in range(data.num_classes)
                    if c != ans and ((h, r, c) if side == "tail" else (c, r, t)) not in known
                ]
                above = sum(float(s[c]) > float(s[ans]) for c in others)
                ties = sum(float(s[c]) == float(s[ans]) for c in others)
                rr.append(1.0 / (1 + above + ties / 2))
            out.append(sum(rr) / 2)
    return np.array(out)


@pytest.mark.parametrize("name", ["complex", "transe"])
def test_filtered_ranks_match_a_brute_force_count(tmp_path, name):
    data = load_kg_data(_cfg(_kg(tmp_path)))
    m = _model(data, name, seed=3)
    rr, metrics = filtered_ranks(m, data, "test", 2)
    np.testing.assert_allclose(rr, _brute_force_rr(m, data, "test", ("train", "valid", "test")))
    assert metrics["mrr"] == pytest.approx(rr.mean(), rel=1e-5)
    rr_val, _ = filtered_ranks(m, data, "valid", 16)
    np.testing.assert_allclose(rr_val, _brute_force_rr(m, data, "valid", ("train", "valid")))
    assert 0 < metrics["hits_at_1"] <= metrics["hits_at_3"] <= metrics["hits_at_10"] == 1.0


# ---- losses -----------------------------------------------------------------------------
def test_hard_loss_is_pykeens_cross_entropy_by_hand():
    scores = torch.tensor([[0.0, 0.0, math.log(2.0)]])  # p = [1/4, 1/4, 1/2]
    assert float(hard_loss(scores, torch.tensor([2]))) == pytest.approx(math.log(2.0))
    z, y = torch.randn(5, 7), torch.randint(0, 7, (5,))
    assert float(hard_loss(z, y)) == pytest.approx(float(F.cross_entropy(z, y)), rel=1e-6)


def test_kd_loss_by_hand():
    T, alpha = 2.0, 0.75
    t = torch.tensor([[2 * math.log(3.0), 0.0]])  # at T=2: p_t = [3/4, 1/4]
    s = torch.tensor([[0.0, 0.0]])  # p_s = [1/2, 1/2]
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    parts = kd_loss(s, t, torch.tensor([0]), T, alpha)
    assert float(parts["soft"]) == pytest.approx(alpha * T * T * kl, rel=1e-6)
    assert float(parts["hard"]) == pytest.approx((1 - alpha) * math.log(2.0), rel=1e-6)


def test_kd_soft_term_is_zero_at_the_teacher_and_pulls_toward_it():
    t = torch.randn(4, 9)
    assert float(kd_loss(t.clone(), t, torch.zeros(4, dtype=torch.long), 3.0, 1.0)["soft"]) < 1e-6
    s = torch.zeros(1, 3, requires_grad=True)
    kd_loss(s, torch.tensor([[5.0, 0.0, 0.0]]), torch.tensor([1]), 1.0, 1.0)["soft"].backward()
    assert s.grad[0, 0] < 0 < s.grad[0, 1]  # a descent step raises the teacher's favourite


def test_dualde_terms_by_hand():
    s_q, s_a = torch.tensor([[3.0, 4.0]]), torch.tensor([[5.0, 0.0]])  # ratio 1, cos 0.6
    t_q, t_a = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[2.0, 0.0, 0.0]])  # 0.5, 1
    # Huber(delta=1): 0.5 * 0.5^2 + 0.5 * 0.4^2
    assert float(dualde_structure(s_q, s_a, t_q, t_a, 1.0)) == pytest.approx(0.205, rel=1e-6)
    assert float(dualde_structure(s_q, s_a, 3 * s_q, 3 * s_a, 1.0)) < 1e-7  # scale-free
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.5]])
    assert float(dualde_soft(s, t, 1.0)) == pytest.approx((1.5 + 0.125) / 2)  # linear, quadratic


def test_distillers_on_a_tiny_graph(tmp_path):
    data = load_kg_data(_cfg(_kg(tmp_path)))
    teacher, student = _model(data, "complex", 8, seed=1), _model(data, "rotate", 2, seed=2)
    kd = KGKD(student, teacher, 2.0, 0.5).train()
    scores, parts = kd(data.x_train, data.y_train, None, None)
    assert scores.shape == (16, 4) and set(parts) == {"soft", "hard"}
    dd = DualDE(student, teacher, 0.5, 1.0, 1.0).train()
    _, parts = dd(data.x_train, data.y_train, None, None)
    assert set(parts) == {"soft", "structure", "hard"}
    sum(parts.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())  # the teacher stays frozen
    assert any(p.grad is not None for p in student.parameters())


# ---- the paired bootstrap ---------------------------------------------------------------
def test_score_evidence_is_paired_over_items():
    a = np.linspace(0.1, 1.0, 50)
    same = score_evidence(a, a)
    assert same["kd_gain"] == 0 and same["verdict"] == "tie" and same["kd_gain_p"] == 1.0
    shifted = score_evidence(a, a + 0.1)  # a constant gain: no spread at all
    assert shifted["kd_gain_ci"] == pytest.approx([0.1, 0.1]) and shifted["verdict"] == "KD helps"
    noisy = score_evidence(a, a + np.random.default_rng(0).normal(0.1, 0.2, 50))
    lo, hi = noisy["kd_gain_ci"]
    assert lo < noisy["kd_gain"] < hi
    with pytest.raises(ValueError):
        score_evidence(a, a[:-1])


# ---- the task end to end ----------------------------------------------------------------
def test_the_task_is_chosen_by_the_data_set():
    from kdrun.data import DATASETS

    assert {DATASETS[n].task for n in ("umls", "nations", "kinships", "kg")} == {"kg"}
    task = task_named("kg")
    assert task.selection.name == "val_mrr" and task.headline == "test_mrr"


def test_smoke_run_end_to_end(run_kdrun, tmp_path):
    d = _kg(tmp_path)
    r = run_kdrun(
        "experiment=smoke_kg", "dataset=kg", f"dataset.path={d}", run_dir=tmp_path / "run"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    m = read_json(tmp_path / "run" / "metrics.json")
    assert m["task"] == "kg" and len(m["student"]["test_rr"]) == 3
    assert m["kd_gain"] == pytest.approx(m["student"]["test_mrr"] - m["baseline"]["test_mrr"])
    ev = m["evidence"]  # paired over the test queries' reciprocal ranks
    assert ev["test"] == "sign-flip-items" and ev["kd_gain"] == pytest.approx(m["kd_gain"])
    assert ev["kd_gain_ci"][0] <= ev["kd_gain"] <= ev["kd_gain_ci"][1]
    r = run_kdrun("experiment=smoke_kg", "teacher=cnn", run_dir=tmp_path / "bad")
    assert r.returncode != 0 and "teacher=cnn reads images" in r.stderr
    assert "e.g. teacher=rotate" in r.stderr


def test_a_models_pykeen_arguments_pass_the_unknown_key_check():
    from kdrun.config import KdrunConfig
    from kdrun.config.checks import unknown_keys

    cfg = OmegaConf.to_container(OmegaConf.structured(KdrunConfig))
    cfg["teacher"].update(name="complex", kwargs={"entity_initializer": "xavier_normal_"})
    cfg["student"]["bogus"] = 1
    cfg = OmegaConf.create(cfg)
    assert unknown_keys(cfg) == ["student.bogus"]
