"""Token-level distillation losses for causal language models, as plain tensor functions.

Every divergence is computed per token over the vocabulary (the last dim), then averaged over
the tokens whose target is not ``IGNORE`` (padding, prompts): a masked token contributes
nothing, whatever its logits. kdrun's convention, as for images:

    loss = alpha * T^2 * D(p_teacher^T, p_student^T) + (1 - alpha) * CE(student, next token)

with D one of
  - forward KL  KL(p_t || p_s) = sum_v p_t(v) (log p_t(v) - log p_s(v))      (Hinton et al. 2015)
  - reverse KL  KL(p_s || p_t)                          (MiniLLM's direction; Gu et al. 2024)
  - generalised JSD_beta = beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t +
    (1 - beta) p_s (GKD, Agarwal et al. 2024; the same definition as TRL's
    ``GKDTrainer.generalized_jsd_loss``): JSD_beta / beta -> forward KL as beta -> 0 and
    JSD_beta / (1 - beta) -> reverse KL as beta -> 1; beta = 0 and 1 are defined as those two
    KLs (as TRL does), 0.5 is the symmetric Jensen-Shannon divergence.

Top-k teacher cache: a teacher's next-token distribution over a 50k vocabulary is too big to
store per training token, so the cache keeps the k most likely tokens' indices and log-probs
(at the run's T) and the log of the remaining "tail" mass. Losses on a cache compare the
*coarse-grained* distributions over k + 1 outcomes (the k tokens, and "any other token") for
teacher and student alike. For any f-divergence (both KLs and the JSD) this is a lower bound
of the full divergence (data processing), exact when the tail is empty; for KL the chain rule
gives the gap exactly: KL(p || q) - KL(coarse p || coarse q) = r_p KL(p_tail/r_p || q_tail/r_q),
r the tail masses (tested in tests/test_lm_losses.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdrun.data import UNLABELLED

# target id of tokens that carry no loss: torch's cross_entropy ignore_index, the value the
# data layer gives an unlabelled image too (one convention, one constant)
IGNORE = UNLABELLED
# log-probabilities are floored here so 0 * log 0 stays 0 (and its gradient finite) in fp32
_LOG_FLOOR = -1e4


@dataclass
class TopK:
    """A teacher's cached next-token distributions: per token the k likeliest ids, their
    log-probabilities and the log of the mass of all other tokens."""

    idx: torch.Tensor  # (..., k) integer token ids
    logp: torch.Tensor  # (..., k) log-probabilities at the run's temperature
    log_tail: torch.Tensor  # (...,) log(1 - sum(exp(logp)))

    def coarse(self) -> torch.Tensor:
        """(..., k + 1) log-probabilities of the k tokens and of the tail bucket."""
        return torch.cat([self.logp.float(), self.log_tail.float().unsqueeze(-1)], -1)

    def pack(self, vocab_size: int) -> dict[str, torch.Tensor]:
        """Compact storage: the smallest integer type for the ids, fp16 log-probs (their
        rounding, ~1e-3 relative, is far below the top-k approximation's), fp32 tail."""
        itype = torch.int32 if vocab_size >= 2**15 else torch.int16
        if vocab_size <= 256:
            itype = torch.uint8
        return {
            "idx": self.idx.to(itype),
            "logp": self.logp.half(),
            "log_tail": self.log_tail.float(),
        }

    @classmethod
    def unpack(cls, packed: dict[str, torch.Tensor]) -> TopK:
        return cls(packed["idx"].long(), packed["logp"].float(), packed["log_tail"].float())


def topk_of(logits: torch.Tensor, T: float, k: int) -> TopK:
    """The top-k summary of ``softmax(logits / T)`` (k is capped at the vocabulary size)."""
    logp = F.log_softmax(logits.float() / T, dim=-1)
    k = min(k, logp.shape[-1])
    top, idx = logp.topk(k, dim=-1)
    log_tail = logp.scatter(-1, idx, float("-inf")).logsumexp(-1)
    return TopK(idx, top, log_tail)


def coarse_student(logp_s: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """A student's (..., V) log-probs grouped as the teacher's top-k tokens plus the rest."""
    inside = logp_s.gather(-1, idx.long())
    tail = logp_s.scatter(-1, idx.long(), float("-inf")).logsumexp(-1, keepdim=True)
    return torch.cat([inside, tail], -1)


def kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dim from log-probabilities; p = 0 terms contribute 0."""
    logp, logq = logp.clamp(min=_LOG_FLOOR), logq.clamp(min=_LOG_FLOOR)
    return (logp.exp() * (logp - logq)).sum(-1)


def forward_kl(logp_s: torch.Tensor, logp_t: torch.Tensor) -> torch.Tensor:
    return kl(logp_t, logp_s)


def reverse_kl(logp_s: torch.Tensor, logp_t: torch.Tensor) -> torch.Tensor:
    return kl(logp_s, logp_t)


def generalized_jsd(logp_s: torch.Tensor, logp_t: torch.Tensor, beta: float) -> torch.Tensor:
    """beta KL(p_t || m) + (1 - beta) KL(p_s || m) with m = beta p_t + (1 - beta) p_s."""
    if beta <= 0:
        return forward_kl(logp_s, logp_t)
    if beta >= 1:
        return reverse_kl(logp_s, logp_t)
    m = torch.logaddexp(logp_t + math.log(beta), logp_s + math.log1p(-beta))
    return beta * kl(logp_t, m) + (1 - beta) * kl(logp_s, m)


Divergence = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def masked_mean(per_token: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens whose target is not IGNORE (0 when there is none)."""
    keep = (targets != IGNORE).to(per_token.dtype)
    return (per_token * keep).sum() / keep.sum().clamp(min=1.0)


def token_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy (nats/token), averaged over the tokens not IGNOREd; 0 when
    every token is (torch's mean would be 0/0 = NaN, and (1 - alpha) * NaN stays NaN)."""
    flat = targets.long().flatten()
    per_token = F.cross_entropy(
        logits.float().flatten(0, -2), flat, ignore_index=IGNORE, reduction="none"
    )
    return masked_mean(per_token, flat)


def soft_divergence(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | TopK,
    targets: torch.Tensor,
    T: float,
    divergence: Divergence,
) -> torch.Tensor:
    """Mean over unmasked tokens of D(p_s^T, p_t^T); ``teacher`` is logits or a TopK cache
    (then both distributions are coarse-grained to its k tokens + tail, see the module doc)."""
    logp_s = F.log_softmax(student_logits.float() / T, dim=-1)
    if isinstance(teacher, TopK):
        logp_s, logp_t = coarse_student(logp_s, teacher.idx), teacher.coarse()
    else:
        logp_t = F.log_softmax(teacher.float() / T, dim=-1)
    return masked_mean(divergence(logp_s, logp_t), targets)


def lm_kd_loss(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | TopK,
    targets: torch.Tensor,
    T: float,
    alpha: float,
    divergence: Divergence = forward_kl,
) -> dict[str, torch.Tensor]:
    """alpha * T^2 * D(p_t^T, p_s^T) + (1 - alpha) * CE, split into named weighted parts.

    T^2 keeps the soft term's gradient scale independent of T (Hinton et al. 2015)."""
    soft = alpha * T * T * soft_divergence(student_logits, teacher, targets, T, divergence)
    hard = (1.0 - alpha) * token_ce(student_logits, targets)
    return {"soft": soft, "hard": hard}
