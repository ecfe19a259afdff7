"""Distillation methods for causal language models (``task=lm``), registered by name.

Every method trains the student on next-token prediction of the batch's token windows
(``x``: inputs (B, L), ``y``: targets (B, L), ``IGNORE`` where a token carries no loss):

- ``kd``: forward KL(p_t^T || p_s^T) per token x T^2, plus CE (Hinton et al. 2015, per token)
- ``reverse_kl``: KL(p_s^T || p_t^T) (the direction MiniLLM optimises; Gu et al., ICLR 2024)
- ``jsd``: GKD's generalised Jensen-Shannon divergence with ``method.beta`` (Agarwal et al.,
  ICLR 2024); ``method.student_data_fraction`` > 0 replaces that share of each batch by
  continuations the student samples itself (on-policy, GKD's lambda), scored by the teacher
- ``seqkd``: sequence-level KD (Kim & Rush, EMNLP 2016): CE on sequences sampled once from
  the teacher (``samples``, ``temperature``, ``top_p``), plus (1 - alpha) CE on the real data

The token-level methods read the teacher from a top-k cache when the pipeline provides one
(``method.cache_top_k``; see kdrun.methods.lm_losses for the approximation) and run the teacher
on the batch otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from kdrun.errors import ConfigError
from kdrun.methods.base import Distiller, MethodOptions, registrar
from kdrun.methods.lm_losses import (
    IGNORE,
    Divergence,
    TopK,
    forward_kl,
    generalized_jsd,
    lm_kd_loss,
    reverse_kl,
    token_ce,
    topk_of,
)
from kdrun.methods.losses import standardize_logits
from kdrun.models.gpt import sample

LM_METHODS: dict[str, type[Distiller]] = {}
register_lm_method = registrar(LM_METHODS)


class LMHardLabels(Distiller):
    """Next-token cross-entropy on the data: how LM teachers and baselines are trained."""

    name = "ce"

    def forward(self, x, y, idx, teacher_out):
        logits = self.student(x)
        return logits, {"hard": token_ce(logits, y)}


@dataclass
class TokenKDOptions(MethodOptions):
    name: str = "kd"
    cache_top_k: int = 64  # teacher tokens kept per position in the cache (the rest: one mass)
    logit_standardization: bool = False  # z-score logits per token before the softmax at T


def _check_top_k(opts: Any) -> None:
    if opts.cache_top_k < 1:
        raise ConfigError(f"method.cache_top_k must be >= 1 (got {opts.cache_top_k}); try 64")


class TokenKD(Distiller):
    """alpha * T^2 * D(p_t^T, p_s^T) + (1 - alpha) * CE per token; D set by the subclass."""

    Options: ClassVar[type] = TokenKDOptions

    def __init__(self, student, teacher, T: float, alpha: float, opts: Any):
        super().__init__(student, teacher)
        self.T, self.alpha, self.opts = T, alpha, opts

    def divergence(self) -> Divergence:
        return forward_kl

    @classmethod
    def check_config(cls, cfg) -> None:
        _check_top_k(cls.options(cfg.method))

    @classmethod
    def build(cls, cfg, ctx):
        opts = cls.options(cfg.method)
        return cls(ctx.new_student(), ctx.teacher(), cfg.T, cfg.alpha, opts)

    def teacher_output_spec(self) -> dict[str, Any] | None:
        """The cache holds top-k log-probs at T: keyed by T, k and the standardisation."""
        if not self.cacheable or self.teacher is None:
            return None
        return {
            "outputs": "topk_logprobs",
            "T": self.T,
            "top_k": self.opts.cache_top_k,
            "standardize": self.opts.logit_standardization,
        }

    def _prep(self, logits: torch.Tensor) -> torch.Tensor:
        return standardize_logits(logits) if self.opts.logit_standardization else logits

    @torch.no_grad()
    def teacher_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The cacheable per-sample summary: top-k log-probs at T (packed, see TopK.pack)."""
        logits = self._prep(self.teacher(x).float())
        return topk_of(logits, self.T, self.opts.cache_top_k).pack(logits.shape[-1])

    def forward(self, x, y, idx, teacher_out):
        logits = self.student(x)
        if teacher_out is None:
            with torch.no_grad():
                teacher: torch.Tensor | TopK = self._prep(self.teacher(x))
        else:
            teacher = TopK.unpack(teacher_out)
        parts = lm_kd_loss(self._prep(logits), teacher, y, self.T, self.alpha, self.divergence())
        if self.opts.logit_standardization:  # the hard term always sees the raw logits
            parts["hard"] = (1.0 - self.alpha) * token_ce(logits, y)
        return logits, parts


@register_lm_method("kd")
class LMKD(TokenKD):
    pass


@dataclass
class ReverseKLOptions(TokenKDOptions):
    name: str = "reverse_kl"


@register_lm_method("reverse_kl")
class ReverseKL(TokenKD):
    Options = ReverseKLOptions

    def divergence(self) -> Divergence:
        return reverse_kl


@dataclass
class JSDOptions(TokenKDOptions):
    name: str = "jsd"
    beta: float = 0.5  # 0: forward KL, 1: reverse KL, between: the generalised JSD
    student_data_fraction: float = 0.0  # GKD's lambda: share of each batch the student writes
    prompt_tokens: int = 32  # on-policy rows keep this many real tokens, then the student's
    temperature: float = 1.0  # the student's sampling temperature for on-policy rows


@register_lm_method("jsd")
class JSD(TokenKD):
    Options = JSDOptions

    def __init__(self, student, teacher, T, alpha, opts):
        super().__init__(student, teacher, T, alpha, opts)
        # On-policy rows need the teacher on text it has never seen: no cache then.
        self.cacheable = opts.student_data_fraction == 0

    @classmethod
    def check_config(cls, cfg) -> None:
        o = cls.options(cfg.method)
        _check_top_k(o)
        if not 0 <= o.beta <= 1:
            raise ConfigError(f"method.beta must be in [0, 1] (got {o.beta}); try 0.5")
        if not 0 <= o.student_data_fraction <= 1:
            raise ConfigError(
                f"method.student_data_fraction must be in [0, 1] (got {o.student_data_fraction})"
            )
        if o.prompt_tokens < 1 or o.temperature <= 0:
            raise ConfigError("method.prompt_tokens must be >= 1 and method.temperature > 0")

    def divergence(self) -> Divergence:
        beta = self.opts.beta
        return lambda s, t: generalized_jsd(s, t, beta)

    def forward(self, x, y, idx, teacher_out):
        n_gen = round(self.opts.student_data_fraction * len(x))
        if n_gen > 0:
            x, y = on_policy_rows(self.student, x, y, n_gen, self.opts)
            teacher_out = None
        return super().forward(x, y, idx, teacher_out)


def on_policy_rows(
    student: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int, opts: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the first ``n`` rows by the student's own continuations of their first
    ``prompt_tokens`` tokens (GKD's on-policy data); only the generated tokens carry loss."""
    L, p = x.shape[1], min(opts.prompt_tokens, x.shape[1] - 1)
    gen = sample(student, x[:n, :p], L + 1 - p, opts.temperature)  # (n, L + 1)
    x, y = x.clone(), y.long().clone()
    x[:n], y[:n] = gen[:, :-1].to(x.dtype), gen[:, 1:]
    y[:n, : p - 1] = IGNORE  # targets inside the prompt are real data, not the student's
    return x, y


@dataclass
class SeqKDOptions(MethodOptions):
    name: str = "seqkd"
    samples: int = 0  # teacher sequences to sample; 0 = one per window of the transfer set
    temperature: float = 1.0  # teacher sampling temperature (0 = greedy)
    top_p: float = 1.0  # nucleus sampling
    prompt_tokens: int = 32  # each sample continues the first tokens of a training window


@register_lm_method("seqkd")
class SeqKD(Distiller):
    """alpha * CE(teacher-sampled sequences) + (1 - alpha) * CE(the real batch).

    The samples are drawn once per teacher and options (the build context stores them);
    ``pos[i]`` is the sample that stands for training row ``i``, so every epoch sees the same
    teacher text for a row."""

    Options = SeqKDOptions
    cacheable = False

    def __init__(
        self, student, teacher, alpha: float, samples: torch.Tensor, pos: torch.Tensor, prompt: int
    ):
        super().__init__(student, teacher)
        self.alpha, self.prompt = alpha, prompt
        self.register_buffer("samples", samples, persistent=False)
        self.register_buffer("pos", pos, persistent=False)

    @classmethod
    def check_config(cls, cfg) -> None:
        o = cls.options(cfg.method)
        if o.samples < 0 or o.prompt_tokens < 1 or o.temperature < 0 or not 0 < o.top_p <= 1:
            raise ConfigError(
                "seqkd: method.samples >= 0, method.prompt_tokens >= 1, method.temperature >= 0 "
                "and method.top_p in (0, 1] are required"
            )

    @classmethod
    def build(cls, cfg, ctx):
        o = cls.options(cfg.method)
        teacher = ctx.teacher()
        samples, pos = ctx.teacher_samples(teacher, o, teacher_samples)
        return cls(ctx.new_student(), teacher, cfg.alpha, samples, pos, o.prompt_tokens)

    def forward(self, x, y, idx, teacher_out):
        rows = self.samples.index_select(0, self.pos.index_select(0, idx)).to(x.device)
        xs, ys = rows[:, :-1], rows[:, 1:].long().clone()
        ys[:, : self.prompt - 1] = IGNORE  # the prompt is real data; the rest is the teacher's
        soft = self.alpha * token_ce(self.student(xs), ys)
        logits = self.student(x)
        return logits, {"soft": soft, "hard": (1.0 - self.alpha) * token_ce(logits, y)}


@torch.no_grad()
def teacher_samples(
    teacher: nn.Module, windows: torch.Tensor, opts: Any, batch_size: int, seed: int
) -> torch.Tensor:
    """Teacher continuations of the first ``prompt_tokens`` of each (n, W) window, as long as
    the windows (W = block_size + 1: inputs and targets of one sample)."""
    gen = torch.Generator().manual_seed(seed)
    W = windows.shape[1]
    p = min(opts.prompt_tokens, W - 1)
    device = next(teacher.parameters()).device
    out = []
    for i in range(0, len(windows), batch_size):
        prompt = windows[i : i + batch_size, :p].to(device)
        out.append(sample(teacher, prompt, W - p, opts.temperature, opts.top_p, gen).cpu())
    return torch.cat(out).to(torch.int32)
