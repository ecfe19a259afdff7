"""Losses of knowledge-graph embedding distillation, over each query's candidate entities.

- ``hard_loss``: PyKEEN's CrossEntropyLoss on the scores of all candidates with the answer's
  one-hot label (1-vs-all training; equals ``F.cross_entropy(scores, y)``).
- ``kd_loss``: kdrun's KD convention, ``alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * hard``,
  the softmax over all candidate entities of a query at temperature T, KL batchmean.
- DualDE (Zhu et al., "DualDE: Dually Distilling Knowledge Graph Embedding for Faster and
  Cheaper Reasoning", WSDM 2022, arXiv 2009.05912): the soft-label term is the Huber loss
  between teacher and student scores, here over every candidate of the query (the paper's
  positive and negative triples are all candidates under 1-vs-all scoring); the structure
  term is the Huber loss between teacher and student of two properties of the (query entity,
  answer) embedding pair: the length ratio ||e_q|| / ||e_a|| and the angle's cosine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdrun.methods.losses import kl_soft

_EPS = 1e-8


def hard_loss(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PyKEEN's CrossEntropyLoss (softmax over candidates) with one-hot labels, batch mean."""
    from pykeen.losses import CrossEntropyLoss  # the kg extra; imported where it is used

    labels = F.one_hot(y.long(), scores.shape[-1]).to(scores.dtype)
    return CrossEntropyLoss(reduction="mean").process_lcwa_scores(scores.float(), labels.float())


def kd_loss(
    s_scores: torch.Tensor, t_scores: torch.Tensor, y: torch.Tensor, T: float, alpha: float
) -> dict[str, torch.Tensor]:
    """kdrun's KD over candidate entities: named, already weighted parts."""
    return {
        "soft": alpha * T * T * kl_soft(s_scores, t_scores, T),
        "hard": (1.0 - alpha) * hard_loss(s_scores, y),
    }


def length_ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a|| / ||b|| per row (DualDE's psi_L)."""
    return a.norm(dim=-1) / b.norm(dim=-1).clamp_min(_EPS)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a, b) per row (DualDE's psi_A)."""
    return F.cosine_similarity(a, b, dim=-1, eps=_EPS)


def dualde_soft(s_scores: torch.Tensor, t_scores: torch.Tensor, delta: float) -> torch.Tensor:
    """Huber(teacher score, student score), mean over queries and candidates."""
    return F.huber_loss(s_scores.float(), t_scores.float(), delta=delta)


def dualde_structure(
    s_q: torch.Tensor, s_a: torch.Tensor, t_q: torch.Tensor, t_a: torch.Tensor, delta: float
) -> torch.Tensor:
    """Huber on the length ratio plus Huber on the cosine of each (query entity, answer) pair;
    the two models' embeddings may differ in size: only these scalars are compared."""
    return F.huber_loss(length_ratio(s_q, s_a), length_ratio(t_q, t_a), delta=delta) + F.huber_loss(
        cosine(s_q, s_a), cosine(t_q, t_a), delta=delta
    )
