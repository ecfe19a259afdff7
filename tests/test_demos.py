"""The classic KD demonstrations: softmax table, omitted class, small data, soft targets."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from rich.console import Console

from kdrun.cli.commands import dark_knowledge_command, softmax_command
from kdrun.commands.soft_targets import CLASSIC_LOGITS, softmax_table, temperature_curves
from kdrun.experiments.analyses import (
    adjust,
    bias_to_match,
    omitted,
    predicted_fraction,
    unseen_classes,
)
from kdrun.report import round_floats
from tests.conftest import read_json

# /work/shared/REFERENCE.md: softmax of cat -5, dog 2, donkey 7, horse 9 and its entropy
REFERENCE = {
    1: ([7.3e-7, 0.0008, 0.1191, 0.8801], 0.372),
    2: ([0.0007, 0.0216, 0.2630, 0.7148], 0.679),
    3: ([0.0058, 0.0599, 0.3170, 0.6174], 0.860),
    5: ([0.0307, 0.1247, 0.3389, 0.5056], 1.078),
    10: ([0.0963, 0.1938, 0.3196, 0.3903], 1.275),
    20: ([0.1599, 0.2269, 0.2913, 0.3219], 1.354),
}

# Smoke-scale versions of the demo recipes (the recipes' own epochs are for the README runs).
FAST = ["teacher.train.epochs=15", "student.train.epochs=15", "runtime.progress=off"]


def test_softmax_table_matches_reference():
    rows = softmax_table(CLASSIC_LOGITS, list(REFERENCE))
    for row in rows:
        probs, ent = REFERENCE[int(row["T"])]
        assert row["probs"] == pytest.approx(probs, abs=6e-5), row["T"]
        assert row["entropy"] == pytest.approx(ent, abs=6e-4), row["T"]
        assert sum(row["probs"]) == pytest.approx(1.0)


@pytest.mark.slow
def test_softmax_command(run_kdrun, capsys):
    r = run_kdrun("softmax", "--json", "-T", "1", "20")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["names"] == ["cat", "dog", "donkey", "horse"]
    assert [row["entropy"] for row in doc["rows"]] == pytest.approx([0.372, 1.354], abs=6e-4)
    # In-process from here on: the same function the subcommand registry calls.
    assert softmax_command(["--logits", "0", "1", "-T", "2"]) == 0
    assert "entropy" in capsys.readouterr().out
    assert softmax_command(["--logits", "1", "2", "--names", "a"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "one name per logit" in err


def test_temperature_curves_grow_with_T():
    g = torch.Generator().manual_seed(0)
    z = 4 * torch.randn(50, 10, generator=g)
    y = z.argmax(1)
    c = temperature_curves(z, y, [1, 2, 5, 20])
    assert all(a < b for a, b in zip(c["mean_entropy"], c["mean_entropy"][1:], strict=False))
    assert all(a < b for a, b in zip(c["non_target_mass"], c["non_target_mass"][1:], strict=False))
    assert c["mean_entropy"][-1] < math.log(10)


def test_unseen_classes():
    cfg = SimpleNamespace(omit_classes=[3], keep_classes=[])
    assert unseen_classes(cfg, 10) == [3]
    cfg = SimpleNamespace(omit_classes=[], keep_classes=[7, 8])
    assert unseen_classes(cfg, 10) == [0, 1, 2, 3, 4, 5, 6, 9]


def test_bias_to_match_hits_the_target_frequency():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(400, 10, generator=g)
    z[:, 3] -= 5  # the omitted class is almost never predicted
    assert predicted_fraction(z, [3]) < 0.01
    for target in (0.1, 0.25, 0.5):
        b = bias_to_match(z, [3], target)
        assert b > 0
        assert predicted_fraction(adjust(z, [3], b), [3]) == pytest.approx(target, abs=1 / 400)
    # Several classes share one bias; their joint frequency is matched.
    b = bias_to_match(z, [3, 5], 0.3)
    assert predicted_fraction(adjust(z, [3, 5], b), [3, 5]) == pytest.approx(0.3, abs=1 / 400)


def _fake_context(tmp_path: Path, y_val_transform=None):
    """An omitted-class context on real digits with fixed random models (nothing trained)."""
    from kdrun.config import KdrunConfig
    from kdrun.data import load_data
    from kdrun.experiments.analyses import Context
    from kdrun.models import build_model

    cfg = OmegaConf.merge(
        OmegaConf.structured(KdrunConfig),
        {
            "dataset": {"name": "digits", "omit_classes": [3]},
            "teacher": {"name": "mlp"},
            "student": {"name": "mlp", "hidden": [32]},
        },
    )
    data = load_data(cfg.dataset)
    if y_val_transform is not None:
        data.y_val = y_val_transform(data.y_val)
    torch.manual_seed(0)
    teacher = build_model(cfg.teacher, data.in_shape, 10)
    student = build_model(cfg.student, data.in_shape, 10)
    reporter = SimpleNamespace(console=Console(file=open("/dev/null", "w")))  # noqa: SIM115
    p = SimpleNamespace(cfg=cfg, data=data, run_dir=tmp_path, reporter=reporter)
    metrics = {"teacher": {"test_acc": 0.0}}
    return Context(p, teacher, student, None, metrics)


def test_automatic_bias_reads_no_label_of_the_omitted_class(tmp_path):
    ref = omitted(_fake_context(tmp_path))

    def scramble(y):  # every validation 3 relabelled, then all labels shuffled
        y = y.clone()
        y[y == 3] = 7
        return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]

    other = omitted(_fake_context(tmp_path, scramble))
    assert other["bias"] == ref["bias"]
    assert other["target_frequency"] == ref["target_frequency"]
    assert ref["bias_source"].startswith("auto")
    assert (tmp_path / "omitted_bias.png").is_file()


def test_accuracies_on_the_omitted_class_carry_a_wilson_interval(tmp_path):
    from kdrun.report.evidence import wilson

    o = omitted(_fake_context(tmp_path))
    n = o["test_count_omitted"]
    assert 0 < n < 100  # the digits' test 3s: a small subset
    for key in ("teacher_acc_on_omitted", "student_acc_on_omitted"):
        lo, hi = o["intervals"][key]
        assert lo <= o[key] <= hi and (lo, hi) == wilson(round(o[key] * n), n)
        assert hi - lo > 0.05  # tens of images: the interval is wide


def test_hand_set_bias(tmp_path):
    ctx = _fake_context(tmp_path)
    ctx.job.cfg.analysis.bias = 3.5
    o = omitted(ctx)
    assert o["bias"] == 3.5 and o["bias_source"] == "manual"
    assert o["auto_bias"] != 3.5  # still reported next to it
    d = ctx.job.data
    z = adjust(ctx.logits(ctx.student, d.x_test), [3], 3.5)
    assert o["student_test_acc_adjusted"] == float((z.argmax(1) == d.y_test).float().mean())
    threes = d.y_test == 3
    assert o["student_acc_on_omitted_adjusted"] == float((z[threes].argmax(1) == 3).float().mean())


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module: the demo recipes share their teacher."""
    return tmp_path_factory.mktemp("store")


@pytest.mark.slow
def test_omit_class_on_digits(run_kdrun, tmp_path, store):
    run = tmp_path / "run"
    r = run_kdrun("experiment=omit_class", *FAST, run_dir=run, store=store)
    assert r.returncode == 0, r.stderr
    m = read_json(run / "metrics.json")
    om = m["omitted"]
    assert om["classes"] == [3] and om["test_count_omitted"] > 0
    # The scratch student never saw a 3 and never predicts one; the distilled one does,
    # clearly, once its bias is adjusted.
    assert om["baseline_acc_on_omitted"] == 0.0
    assert om["student_acc_on_omitted_adjusted"] > 0.3
    assert om["student_acc_on_omitted_adjusted"] >= om["student_acc_on_omitted"]
    for k in ("bias", "student_acc_on_omitted", "student_test_acc_adjusted"):
        assert isinstance(om[k], float)
    assert om["student_test_acc"] == pytest.approx(m["student"]["test_acc"])
    assert om["baseline_acc_on_omitted"] == m["baseline"]["per_class_acc"][3]
    assert len(om["curve"]["bias"]) == len(om["curve"]["student_acc_on_omitted"])
    assert (run / "omitted_bias.png").is_file()
    results = {k: v for k, v in m.items() if k != "config"}
    assert _floats(results) and all(x == float(f"{x:.6g}") for x in _floats(results))


def _floats(value) -> list[float]:
    """Every float inside a JSON document (stored accuracies: 6 significant digits)."""
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [x for v in value for x in _floats(v)]
    return []


def test_round_floats_keeps_six_significant_digits():
    doc = {"curve": [0.925000011920929, 1e-9 / 3], "n": 3, "ok": True, "inf": float("inf")}
    out = round_floats(doc)
    assert out == {"curve": [0.925, 3.33333e-10], "n": 3, "ok": True, "inf": float("inf")}
    assert isinstance(out["n"], int) and out["ok"] is True


@pytest.mark.slow
def test_small_data_on_digits(run_kdrun, tmp_path, store):
    run = tmp_path / "run"
    r = run_kdrun(
        "experiment=small_data",
        *FAST,
        "student.train.epochs=40",
        "analysis.full_data_epochs=5",
        run_dir=run,
        store=store,
    )
    assert r.returncode == 0, r.stderr
    m = read_json(run / "metrics.json")
    sd = m["small_data"]
    assert sd["train_fraction"] == 0.03
    assert (
        sd["train_size"] == m["data"]["student_train_size"] == round(0.03 * sd["full_train_size"])
    )
    assert sd["baseline_test_acc"] == m["baseline"]["test_acc"]
    assert sd["student_test_acc"] == m["student"]["test_acc"]
    full, base, stud = (
        sd[k] for k in ("full_data_baseline_test_acc", "baseline_test_acc", "student_test_acc")
    )
    assert full > base  # 39 images vs 1294
    assert sd["gap_closed"] == pytest.approx((stud - base) / (full - base), rel=1e-3)  # 6 digits
    assert (run / "small_data.png").is_file()
    with open(run / "history.csv") as f:
        stages = {row["stage"] for row in csv.DictReader(f)}
    assert {"teacher", "baseline", "full_baseline", "student"} <= stages
    assert "omitted" not in m


@pytest.mark.slow
def test_soft_targets_and_dark_knowledge(run_kdrun, tmp_path, store, capsys):
    run = tmp_path / "run"
    r = run_kdrun("experiment=soft_targets", *FAST, "analysis.examples=3", run_dir=run, store=store)
    assert r.returncode == 0, r.stderr
    st = read_json(run / "metrics.json")["soft_targets"]
    assert st["temperatures"] == [1, 2, 3, 5, 10, 20]
    ent = st["teacher"]["mean_entropy"]
    assert all(a < b for a, b in zip(ent, ent[1:], strict=False))
    assert len(st["examples"]) == 3 and st["examples"][0]["label"] == "0"
    for f in ("teacher_soft_targets.png", "entropy_vs_T.png"):
        assert (run / f).is_file()
    # The same view for a finished run's teacher, from its run directory.
    d = run_kdrun("dark-knowledge", str(run), "-T", "1", "4", "-n", "2")
    assert d.returncode == 0, d.stderr
    assert (run / "dark_knowledge" / "entropy_vs_T.png").is_file()
    doc = read_json(run / "dark_knowledge" / "dark_knowledge.json")
    # Same teacher, same test set: the same entropy at T=1 as the run itself measured.
    assert doc["teacher"]["mean_entropy"][0] == pytest.approx(ent[0], rel=1e-5)
    # ... or from the teacher's store artifact (read-only: figures go to --out); in-process.
    art = next(d for d in (store / "teacher").iterdir() if (d / "meta.json").is_file())
    assert dark_knowledge_command([str(art), "-n", "1", "--out", str(tmp_path / "dk")]) == 0
    assert (tmp_path / "dk" / "teacher_soft_targets.png").is_file()
    assert dark_knowledge_command([str(art)]) == 2  # no --out for a store artifact
    assert dark_knowledge_command([str(tmp_path)]) == 2  # not a run directory
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("kdrun dark-knowledge: error:") for line in err)


def test_bad_analysis_option_is_rejected():
    from kdrun.config import KdrunConfig
    from kdrun.errors import ConfigError
    from kdrun.experiments import validate

    cfg = OmegaConf.merge(
        OmegaConf.structured(KdrunConfig),
        {"dataset": {"name": "digits"}, "teacher": {"name": "mlp"}, "student": {"name": "mlp"}},
    )
    validate(cfg)
    cfg.analysis.bias_prior = "median"
    with pytest.raises(ConfigError, match="analysis.bias_prior"):
        validate(cfg)
