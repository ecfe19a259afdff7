"""The language-model task end to end: smoke run, generate, sweep sharing the teacher,
resume after SIGKILL, one-line errors, and the loop on token windows with a top-k cache."""

from __future__ import annotations

import math
import signal

import pytest
import torch

from kdrun.config import TrainConfig
from kdrun.data import load_text_data
from kdrun.engine import RowCache, Selection, fit
from kdrun.errors import Interrupted
from kdrun.methods.lm import LMKD, TokenKDOptions
from kdrun.models.gpt import GPT, GPTShape
from kdrun.tasks import task_named
from tests.conftest import read_json
from tests.reliability_util import start, wait_for
from tests.test_text_data import _cfg

SMOKE = ("experiment=smoke_lm", "runtime.num_threads=1")


def _text_cfg(path, **kw):
    return _cfg(**{"path": str(path), "train_fraction": 0.5, **kw})


def _corpus(root, n=12):
    root.mkdir()
    for i in range(n):
        (root / f"m{i}.py").write_text(
            "".join(f"def f{j}(x):\n    return x + {j}\n" for j in range(30))
        )
    return root


def _fit_lm(data, ckpt, stop_after=None, init_seed=0):
    torch.manual_seed(init_seed)
    student = GPT(GPTShape(256, 16, 1, 2, 16))
    torch.manual_seed(1)
    teacher = GPT(GPTShape(256, 16, 1, 2, 32))
    d = LMKD(student, teacher, 2.0, 0.5, TokenKDOptions(cache_top_k=8))
    rows = data.student_idx
    pos = torch.full((len(data.x_train),), -1, dtype=torch.long)
    pos[rows] = torch.arange(len(rows))
    cache = RowCache(d.teacher_outputs(data.x_train[rows]), pos)
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return stop_after is not None and calls["n"] > stop_after

    lm = task_named("lm")
    return fit(
        d,
        data,
        TrainConfig(epochs=3, batch_size=4, lr=0.01, steps_per_epoch=6),
        stage="student",
        seed=0,
        train_idx=rows,
        val_idx=data.student_val_idx,
        teacher_cache=cache,
        checkpoint=ckpt,
        fingerprint="fp",
        should_stop=should_stop,
        val_score=lm.val_score,
        selection=lm.selection,
    )


def test_loop_on_token_windows_with_a_topk_cache_resumes_exactly(tmp_path):
    data = load_text_data(_text_cfg(_corpus(tmp_path / "c")))
    ref = _fit_lm(data, None)
    assert len(ref.history) == 3 and all("val_bpb" in r for r in ref.history)
    best = min(r["val_bpb"] for r in ref.history)
    assert ref.best_val_acc == best  # selection picks the lowest bits per byte
    assert ref.history[ref.best_epoch - 1]["val_bpb"] == best
    assert 0 <= ref.history[0]["train_acc"] <= 1
    with pytest.raises(Interrupted, match="epoch 2, batch 3/6"):
        _fit_lm(data, tmp_path / "p.pt", stop_after=9)
    res = _fit_lm(data, tmp_path / "p.pt", init_seed=5)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in res.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in ref.history]
    for k, v in ref.last_state.items():
        assert torch.equal(v, res.last_state[k]), k


def test_selection_direction():
    assert Selection("val_bpb", higher_is_better=False).score(2.0) == -2.0
    assert Selection().score(0.5) == 0.5


@pytest.mark.slow
def test_smoke_lm_end_to_end_then_generate(run_kdrun, tmp_path):
    run_dir = tmp_path / "run"
    r = run_kdrun(*SMOKE, run_dir=run_dir)
    assert r.returncode == 0, r.stderr
    m = read_json(run_dir / "metrics.json")
    assert m["status"] == "completed" and m["task"] == "lm"
    for stage in ("teacher", "baseline", "student"):
        s = m[stage]
        for k in ("val_bpb", "test_loss", "test_ppl", "test_bpb", "last_test_bpb"):
            assert math.isfinite(s[k]), (stage, k)
        # metrics.json keeps 6 significant digits
        assert s["test_ppl"] == pytest.approx(math.exp(s["test_loss"]), rel=1e-5)
        assert s["test_bpb"] == pytest.approx(s["test_loss"] / math.log(2), rel=1e-5)
    assert 0 <= m["student"]["agreement"] <= 1 and m["student"]["kl_to_teacher"] >= 0
    gain = m["baseline"]["test_bpb"] - m["student"]["test_bpb"]  # positive: distillation helped
    assert m["kd_gain"] == pytest.approx(gain, abs=1e-5)
    ev = m["evidence"]  # paired over test windows: its mean gain is kd_gain
    assert ev["test"] == "sign-flip-windows" and ev["kd_gain"] == pytest.approx(gain, rel=1e-3)
    assert ev["kd_gain_ci"][0] <= ev["kd_gain"] <= ev["kd_gain_ci"][1]
    assert "test windows)" in " ".join(r.stdout.split())
    src = m["data"]["source"]
    assert src["python"].count(".") == 2 and len(src["files_sha256"]) == 64
    assert "val_bpb" in (run_dir / "history.csv").read_text().splitlines()[0]
    assert "test bpb" in r.stdout and "bits per byte" in r.stdout
    for model in ("student", "teacher"):
        g = run_kdrun(
            "generate", str(run_dir), "--prompt", "def ", "--tokens", "30", "--model", model
        )
        assert g.returncode == 0, g.stderr
        assert g.stdout.startswith("def ")


@pytest.mark.slow
def test_lm_sweep_trains_the_teacher_once(run_kdrun, tmp_path):
    sweep = tmp_path / "sweep"
    r = run_kdrun("-m", *SMOKE, "method=kd,reverse_kl,jsd,seqkd", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr
    ms = [read_json(sweep / str(i) / "metrics.json") for i in range(4)]
    assert [m["config"]["method"]["name"] for m in ms] == ["kd", "reverse_kl", "jsd", "seqkd"]
    assert [m["from_store"]["teacher"] for m in ms] == [False, True, True, True]
    assert [m["from_store"]["baseline"] for m in ms] == [False, True, True, True]
    assert all(math.isfinite(m["student"]["test_bpb"]) for m in ms)
    assert ms[3]["from_store"]["teacher_samples"] is False
    # the sweep's summary is in bits per byte: the lowest validation bpb is the best job
    doc = read_json(sweep / "summary.json")
    assert doc["task"] == "lm" and doc["n_failed"] == 0
    assert [j["student_bpb"] for j in doc["jobs"]] == [m["student"]["test_bpb"] for m in ms]
    best = min(doc["jobs"], key=lambda j: j["student_val_bpb"])
    t = "-" if best["T"] is None else f"{best['T']:.4g}"  # a T the method ignores: null
    assert f"best by validation bits per byte: T={t}" in r.stdout
    assert f"job {best['job']})" in r.stdout


@pytest.mark.slow
def test_lm_sigkill_in_the_student_then_rerun_matches(run_kdrun, tmp_path):
    store = tmp_path / "store"
    args = [*SMOKE, "student.train.epochs=6", f"store_dir={store}"]
    ref = run_kdrun(*args, run_dir=tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    run_dir = tmp_path / "run"
    partial = run_dir / "checkpoints" / "student.partial.pt"
    p = start(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path, log=tmp_path / "1.log")
    wait_for(partial.is_file, p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    r = run_kdrun(*args, run_dir=run_dir)
    assert r.returncode == 0, r.stderr
    a, b = read_json(tmp_path / "ref" / "metrics.json"), read_json(run_dir / "metrics.json")
    keys = ("test_bpb", "val_bpb", "test_loss", "agreement", "kl_to_teacher", "best_epoch")
    assert {k: a["student"][k] for k in keys} == {k: b["student"][k] for k in keys}
    assert b["student"]["resumed_from_epoch"] >= 1 and not partial.exists()


@pytest.mark.slow
def test_lm_bad_input_is_one_line(run_kdrun, tmp_path):
    d = _corpus(tmp_path / "c")
    (d / "logo.png").write_bytes(bytes(range(256)) * 4)
    r = run_kdrun(*SMOKE, "dataset=text", f"dataset.path={d}", run_dir=tmp_path / "run")
    assert r.returncode == 2
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "logo.png is not UTF-8 text" in err[0], r.stderr
    r = run_kdrun(*SMOKE, "method=fitnet", run_dir=tmp_path / "run2")
    assert r.returncode == 2 and "unknown method 'fitnet'; choose one of: jsd, kd" in r.stderr


@pytest.mark.slow
def test_pretrained_hf_teacher_with_its_tokenizer(run_kdrun, tmp_path):
    """A saved tiny GPT-2 and a tokenizer trained here (no download) as the teacher of a gpt
    student: pretrained by its directory alone, so evaluated and never trained (source
    'pretrained', 0 s, like an image teacher with weights); teacher.pretrained=true names the
    same teacher; finetune_epochs trains it first; a byte-level run with it is a vocabulary
    mismatch."""
    transformers = pytest.importorskip("transformers")
    from tests.test_text_data import _save_tiny_tokenizer

    corpus = _corpus(tmp_path / "c")
    _save_tiny_tokenizer(tmp_path / "tok", corpus)
    vocab = len(transformers.AutoTokenizer.from_pretrained(str(tmp_path / "tok")))
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=16, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(str(tmp_path / "m"))
    hf = (
        *SMOKE,
        "dataset=text",
        f"dataset.path={corpus}",
        "dataset.block_size=16",
        "teacher=hf_causal_lm",
        f"teacher.path={tmp_path / 'm'}",
    )
    tok = f"dataset.tokenizer={tmp_path / 'tok'}"
    r = run_kdrun(*hf, tok, run_dir=tmp_path / "run")
    assert r.returncode == 0, r.stderr
    m = read_json(tmp_path / "run" / "metrics.json")
    t = m["teacher"]
    assert t["model"] == "hf_causal_lm" and t["source"] == "pretrained"
    assert t["train_seconds"] == 0 and t["best_epoch"] == 0 and t["from_cache"] is False
    assert math.isfinite(t["test_bpb"]) and "teacher" not in m["from_store"]
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert not [ln for ln in history if ln.startswith("teacher,")]  # no teacher epoch ran
    assert m["data"]["num_classes"] == vocab and m["data"]["source"]["tokenizer"].startswith("hf:")
    assert math.isfinite(m["student"]["test_bpb"]) and m["student"]["agreement"] is not None
    # the explicit switch names the same teacher: its cached outputs are reused
    r = run_kdrun(*hf, tok, "teacher.pretrained=true", run_dir=tmp_path / "run2")
    assert r.returncode == 0, r.stderr
    m2 = read_json(tmp_path / "run2" / "metrics.json")
    assert m2["teacher"]["source"] == "pretrained" and m2["teacher"]["test_bpb"] == t["test_bpb"]
    assert m2["from_store"]["teacher_logits"] is True
    assert m2["from_store"]["teacher_test_logits"] is True
    # fine-tuned first when asked, through the store like a trained teacher
    r = run_kdrun(*hf, tok, "teacher.finetune_epochs=1", run_dir=tmp_path / "ft")
    assert r.returncode == 0, r.stderr
    ft = read_json(tmp_path / "ft" / "metrics.json")
    assert ft["teacher"]["source"] == "finetuned" and ft["from_store"]["teacher"] is False
    assert ft["teacher"]["best_epoch"] == 1 and ft["teacher"]["train_seconds"] > 0
    history = (tmp_path / "ft" / "history.csv").read_text().splitlines()
    assert len([ln for ln in history if ln.startswith("teacher,")]) == 1
    r = run_kdrun(*hf, run_dir=tmp_path / "bytes")  # bytes (256) vs the model's vocabulary
    assert r.returncode == 2 and "vocabulary mismatch" in r.stderr


@pytest.mark.slow
def test_on_policy_jsd_runs_without_a_cache(run_kdrun, tmp_path):
    r = run_kdrun(*SMOKE, "method=jsd", "method.student_data_fraction=0.5", run_dir=tmp_path / "r")
    assert r.returncode == 0, r.stderr
    m = read_json(tmp_path / "r" / "metrics.json")
    assert "teacher_logits" not in m["from_store"]  # on-policy rows need the live teacher
    assert math.isfinite(m["student"]["test_bpb"])
