"""The GPT model (causality, weight tying, cached sampling) and hf_causal_lm from a local dir."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from kdrun.errors import ConfigError
from kdrun.models.features import capture
from kdrun.models.gpt import (
    GPT,
    GPTShape,
    HFCausalLM,
    gpt,
    hf_causal_lm,
    same_vocabulary,
    sample,
    top_p_filter,
)


def _tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTShape(vocab_size=31, block_size=16, n_layer=2, n_head=2, n_embd=16, **kw))


def test_shapes_tying_and_stages():
    m = _tiny()
    out = m(torch.randint(0, 31, (3, 10)))
    assert out.shape == (3, 10, 31)
    assert m.head.weight is m.wte.weight
    assert m.kd_stages == ["blocks.0", "blocks.1"] and m.kd_head == "head"
    for name in m.kd_stages:
        m.get_submodule(name)


def test_causal_a_later_token_never_changes_earlier_logits():
    m = _tiny().eval()
    x = torch.randint(0, 31, (2, 12))
    y = x.clone()
    y[:, 7:] = (y[:, 7:] + 5) % 31
    torch.testing.assert_close(m(x)[:, :7], m(y)[:, :7])
    assert not torch.allclose(m(x)[:, 7:], m(y)[:, 7:])


def test_cached_decoding_equals_full_recompute():
    m = _tiny().eval()
    prompt = torch.randint(0, 31, (2, 3))
    greedy = sample(m, prompt, 10, temperature=0)
    seq = prompt
    for _ in range(10):  # reference: re-read the whole sequence every step, no cache
        seq = torch.cat([seq, m(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(greedy, seq)
    # beyond the block size it keeps going on the last block_size tokens
    assert sample(m, prompt, 20, temperature=0).shape == (2, 23)


def test_sampling_is_reproducible_with_a_generator_and_top_p_keeps_the_nucleus():
    m = _tiny()
    p = torch.randint(0, 31, (2, 2))
    a = sample(m, p, 8, 1.0, 0.9, torch.Generator().manual_seed(1))
    b = sample(m, p, 8, 1.0, 0.9, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    logits = torch.tensor([[3.0, 2.0, 1.0, -5.0]])
    kept = top_p_filter(logits, 0.7).isfinite()
    probs = logits.softmax(-1)[0]  # 0.66, 0.24, ...: 0.7 needs the top two
    assert probs[0] < 0.7 < probs[:2].sum()
    assert kept.tolist() == [[True, True, False, False]]
    assert top_p_filter(logits, 0.01).isfinite().sum() == 1  # the top token always stays


def test_registry_builder_reads_the_config_and_checks_block_size():
    cfg = OmegaConf.create(
        {"n_layer": 1, "n_head": 2, "n_embd": 8, "block_size": 0, "dropout": 0.0}
    )
    m = gpt(cfg, (12,), 256)
    assert m.block_size == 12 and m.vocab_size == 256
    with pytest.raises(ConfigError, match="block_size"):
        gpt(OmegaConf.merge(cfg, {"block_size": 8}), (12,), 256)
    with pytest.raises(ConfigError, match="divisible"):
        gpt(OmegaConf.merge(cfg, {"n_head": 3}), (12,), 256)


def _save_tiny_gpt2(path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    return transformers


def test_hf_causal_lm_loads_a_saved_tiny_gpt2_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _save_tiny_gpt2(tmp_path / "m")
    cfg = OmegaConf.create({"path": str(tmp_path / "m")})
    m = hf_causal_lm(cfg, (16,), 64)
    assert isinstance(m, HFCausalLM)
    assert m(torch.randint(0, 64, (2, 16))).shape == (2, 16, 64)
    assert m.kd_stages == [f"hf.transformer.h.{i}" for i in range(2)]
    m.get_submodule(m.kd_stages[-1])
    assert sample(m, torch.zeros(1, 2, dtype=torch.long), 3, 0).shape == (1, 5)
    # a smaller tokenizer (the model pads its embedding to 64): logits are cut to it
    assert hf_causal_lm(cfg, (16,), 60)(torch.zeros(1, 4, dtype=torch.long)).shape[-1] == 60
    assert same_vocabulary(50304, 50277) and same_vocabulary(151936, 151643)
    assert not same_vocabulary(300, 256) and not same_vocabulary(50257, 256)
    with pytest.raises(ConfigError, match="vocabulary mismatch"):
        hf_causal_lm(cfg, (16,), 256)  # bytes (256) for a model of 64 tokens
    with pytest.raises(ConfigError, match="config.json"):
        hf_causal_lm(OmegaConf.create({"path": str(tmp_path)}), (16,), 64)


def test_block_hooks_capture_every_stage_and_the_embedding():
    m = _tiny()
    x = torch.randint(0, 31, (2, 10))
    with capture(m, m.kd_stages, embedding=True) as taps:
        out = m(x)
    assert set(taps.stages) == set(m.kd_stages)
    assert all(t.shape == (2, 10, 16) for t in taps.stages.values())
    torch.testing.assert_close(m.head(taps.embedding), out)


def test_a_saved_hf_causal_lm_is_a_pretrained_teacher_keyed_by_its_files(tmp_path):
    """One pretrained switch: is_pretrained covers hf_causal_lm with a path (and any model
    with pretrained=true); its store key follows the directory's content, not its name, and
    pretrained=true beside the directory names the same teacher."""
    from kdrun.experiments.keys import model_section as _model_spec
    from kdrun.models import is_pretrained

    _save_tiny_gpt2(tmp_path / "m")
    base = {"name": "hf_causal_lm", "path": str(tmp_path / "m")}
    cfg = OmegaConf.create(base)
    assert is_pretrained(cfg)
    assert not is_pretrained(OmegaConf.create({"name": "hf_causal_lm", "path": None}))
    assert not is_pretrained(OmegaConf.create({"name": "gpt"}))
    assert is_pretrained(OmegaConf.create({"name": "gpt", "pretrained": True}))
    spec = _model_spec(cfg)
    assert spec["weights"].startswith("hf:") and "path" not in spec
    assert _model_spec(OmegaConf.create({**base, "pretrained": True})) == spec
    conf = tmp_path / "m" / "config.json"
    conf.write_text(json.dumps({**json.loads(conf.read_text()), "n_layer": 1}))
    assert _model_spec(cfg)["weights"] != spec["weights"]  # changed files: another teacher
    # used as built (no file to hash): keyed by the weights it builds
    gpt_cfg = OmegaConf.create({"name": "gpt", "pretrained": True})
    a, b = GPT(GPTShape(64, 16, 1, 2, 16)), GPT(GPTShape(64, 16, 1, 2, 16))
    assert _model_spec(gpt_cfg, a)["state"] != _model_spec(gpt_cfg, b)["state"]
    b.load_state_dict(a.state_dict())
    assert _model_spec(gpt_cfg, a) == _model_spec(gpt_cfg, b)
    assert "state" not in _model_spec(OmegaConf.create({"name": "gpt"}), a)  # trained: config
