"""Causal language models: a small GPT built here, and a Hugging Face model from a local dir.

Both take token ids (B, L) and return next-token logits (B, L, V); the registry's
``num_classes`` is the vocabulary size and ``in_shape`` is ``(block_size,)``. Like every kdrun
model they name their per-block modules in ``kd_stages`` (feature methods hook them) and their
output projection in ``kd_head``.

The GPT follows GPT-2 / nanoGPT (Radford et al. 2019; Karpathy, nanoGPT ``model.py``): pre-LN
blocks, learned absolute positions, the output projection tied to the token embedding,
N(0, 0.02) initialisation with residual projections scaled by 1/sqrt(2 * n_layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.errors import ConfigError
from kdrun.models.registry import register_model

KVCache = list[tuple[torch.Tensor, torch.Tensor]]
MAX_VOCAB_PADDING = 512  # rows an HF model's embedding may have beyond its tokenizer's


@dataclass(frozen=True)
class GPTShape:
    vocab_size: int
    block_size: int
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 128
    dropout: float = 0.0


class CausalSelfAttention(nn.Module):
    def __init__(self, s: GPTShape):
        super().__init__()
        self.n_head = s.n_head
        self.qkv = nn.Linear(s.n_embd, 3 * s.n_embd)
        self.proj = nn.Linear(s.n_embd, s.n_embd)
        self.dropout = s.dropout

    def forward(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        if past is not None:  # incremental decoding: the new positions see every cached one
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        drop = self.dropout if self.training else 0.0
        # With a cache, the one new position attends to every cached one: no mask needed.
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=past is None)
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return self.proj(y), (k, v)


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, s: GPTShape):
        super().__init__()
        self.ln1 = nn.LayerNorm(s.n_embd)
        self.attn = CausalSelfAttention(s)
        self.ln2 = nn.LayerNorm(s.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(s.n_embd, 4 * s.n_embd), nn.GELU(), nn.Linear(4 * s.n_embd, s.n_embd)
        )
        self.drop = nn.Dropout(s.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, _ = self.attn(self.ln1(x))
        x = x + self.drop(a)
        return x + self.drop(self.mlp(self.ln2(x)))

    def step(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        a, kv = self.attn(self.ln1(x), past)
        x = x + a
        return x + self.mlp(self.ln2(x)), kv


class GPT(nn.Module):
    """Decoder-only transformer; ``forward(ids)`` gives logits for every position."""

    def __init__(self, s: GPTShape):
        super().__init__()
        if s.n_embd % s.n_head:
            raise ConfigError(
                f"gpt: n_embd={s.n_embd} is not divisible by n_head={s.n_head}; pick n_head "
                f"dividing n_embd"
            )
        self.shape = s
        self.block_size = s.block_size
        self.vocab_size = s.vocab_size
        self.wte = nn.Embedding(s.vocab_size, s.n_embd)
        self.wpe = nn.Embedding(s.block_size, s.n_embd)
        self.drop = nn.Dropout(s.dropout)
        self.blocks = nn.ModuleList(Block(s) for _ in range(s.n_layer))
        self.ln_f = nn.LayerNorm(s.n_embd)
        self.head = nn.Linear(s.n_embd, s.vocab_size, bias=False)
        self.head.weight = self.wte.weight  # weight tying (Press & Wolf 2017)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * s.n_layer))
        self.kd_stages = [f"blocks.{i}" for i in range(s.n_layer)]
        self.kd_head = "head"

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def _embed(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        pos = torch.arange(start, start + ids.shape[1], device=ids.device)
        return self.drop(self.wte(ids.long()) + self.wpe(pos))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.block_size:
            raise ConfigError(
                f"gpt: a context of {ids.shape[1]} tokens exceeds its block_size "
                f"{self.block_size}; raise the model's block_size"
            )
        x = self._embed(ids, 0)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    @torch.no_grad()
    def next_logits(self, ids: torch.Tensor, cache: KVCache | None) -> tuple[torch.Tensor, KVCache]:
        """Logits of the token after ``ids``; with ``cache``, ``ids`` holds only the new token."""
        start = 0 if cache is None else cache[0][0].shape[2]
        x = self._embed(ids, start)
        new: KVCache = []
        for i, block in enumerate(self.blocks):
            x, kv = block.step(x, None if cache is None else cache[i])
            new.append(kv)
        return self.head(self.ln_f(x[:, -1])), new


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2020): keep the smallest set of tokens whose
    probability reaches ``top_p`` (the most likely one always stays); others get -inf."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(-1, descending=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token already enough
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


@torch.no_grad()
def sample(
    model: nn.Module,
    prompt: torch.Tensor,
    new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Continue each row of ``prompt`` (B, P) by ``new_tokens`` sampled tokens -> (B, P + new).

    Uses the model's key/value cache while the sequence fits its block size; past that (or
    for a model without ``next_logits``) it re-reads the last ``block_size`` tokens per step.
    ``temperature`` 0 is greedy decoding.
    """
    was_training = model.training
    model.eval()
    seq = prompt.long()
    block = getattr(model, "block_size", None) or seq.shape[1] + new_tokens
    cache: KVCache | None = None
    use_cache = hasattr(model, "next_logits")
    for _ in range(new_tokens):
        if use_cache and seq.shape[1] <= block:
            feed = seq if cache is None else seq[:, -1:]
            logits, cache = model.next_logits(feed, cache)
        else:
            logits = model(seq[:, -block:])[:, -1]
        logits = logits.float()
        if temperature <= 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            probs = top_p_filter(logits / temperature, top_p).softmax(-1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(seq.device)
        seq = torch.cat([seq, nxt], 1)
    model.train(was_training)
    return seq


@register_model("gpt", inputs="tokens")
def gpt(cfg, in_shape, num_classes) -> GPT:
    """``in_shape`` = (block_size,) of the data; ``num_classes`` = the vocabulary size."""
    block = int(cfg.block_size) or int(in_shape[0])
    if block < in_shape[0]:
        raise ConfigError(
            f"gpt: block_size={block} is shorter than the data's contexts ({in_shape[0]} tokens); "
            f"raise the model's block_size or lower dataset.block_size"
        )
    return GPT(GPTShape(num_classes, block, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.dropout))


class HFCausalLM(nn.Module):
    """A transformers ``AutoModelForCausalLM`` returning plain logits; blocks as kd_stages."""

    def __init__(self, model: nn.Module, vocab_size: int | None = None):
        super().__init__()
        self.hf = model
        self.model_vocab = int(model.get_output_embeddings().weight.shape[0])
        # Models often pad their embedding past the tokenizer's size: those rows are never
        # produced by the tokenizer, so the logits are cut to the tokenizer's vocabulary.
        self.vocab_size = vocab_size or self.model_vocab
        cfg = model.config
        positions = getattr(cfg, "n_positions", 0) or getattr(cfg, "max_position_embeddings", 0)
        self.block_size = int(positions) or None
        n = int(getattr(model.config, "num_hidden_layers", 0) or 0)
        lists = [
            (name, m)
            for name, m in model.named_modules()
            if isinstance(m, nn.ModuleList) and len(m) == n
        ]
        prefix = "hf." + lists[0][0] if lists else None
        self.kd_stages = [f"{prefix}.{i}" for i in range(n)] if prefix else []
        self.kd_head = "hf." + next(
            name for name, m in model.named_modules() if m is model.get_output_embeddings()
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=ids.long(), use_cache=False).logits[..., : self.vocab_size]


def load_hf_causal_lm(path: str | Path, vocab_size: int | None = None) -> HFCausalLM:
    """AutoModelForCausalLM from a local directory (``local_files_only``: never downloads)."""
    try:
        from transformers import AutoModelForCausalLM  # optional extra: kdrun[hf]
    except ImportError:
        raise ConfigError(
            "model hf_causal_lm needs transformers; pip install 'kdrun[hf]'"
        ) from None
    d = Path(str(path)).expanduser()
    if not (d / "config.json").is_file():
        raise ConfigError(
            f"hf_causal_lm: path={d} is not a saved model directory (no config.json); give "
            f"the directory of model.save_pretrained(...)"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(str(d), local_files_only=True)
    except Exception as e:  # transformers raises many types for a broken directory
        msg = " ".join(str(e).split())[:200]
        raise ConfigError(f"hf_causal_lm: cannot load {d} ({msg}); re-save the model") from None
    return HFCausalLM(model, vocab_size)


def same_vocabulary(model_vocab: int, tokenizer_vocab: int) -> bool:
    """Equal, or the model's embedding padded past the tokenizer's size to a multiple of 64
    (Pythia: 50277 -> 50304, Qwen2: 151643 -> 151936) by fewer than MAX_VOCAB_PADDING rows:
    those extra rows are never produced by the tokenizer. Anything else is another
    tokenizer's model."""
    if model_vocab == tokenizer_vocab:
        return True
    padded = model_vocab % 64 == 0
    return padded and tokenizer_vocab < model_vocab < tokenizer_vocab + MAX_VOCAB_PADDING


@register_model("hf_causal_lm", inputs="tokens")
def hf_causal_lm(cfg, in_shape, num_classes) -> nn.Module:
    if not cfg.path:
        raise ConfigError("hf_causal_lm needs path=DIR (a directory from save_pretrained)")
    model = load_hf_causal_lm(cfg.path, num_classes)
    if not same_vocabulary(model.model_vocab, num_classes):
        raise ConfigError(
            f"vocabulary mismatch: hf_causal_lm at {cfg.path} has {model.model_vocab} tokens but "
            f"the data's tokenizer has {num_classes}; set dataset.tokenizer to the model's own "
            f"tokenizer directory (teacher and student must share one tokenizer)"
        )
    return model
