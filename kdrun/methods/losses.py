"""Loss functions as plain tensor functions; methods compose them.

kdrun's convention (documented in the README):

    loss = alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(student, y)

with the KL summed over classes and averaged over the batch ("batchmean").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdrun.methods.lm_losses import IGNORE


def hard_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with the labels, averaged over the labelled rows: a row labelled
    ``IGNORE`` (-100, an unlabelled image of the transfer set, dataset.unlabelled_transfer)
    adds nothing. A batch with no labelled row gives 0 with zero gradients, where the plain
    mean would be 0/0 = NaN. Equal to ``F.cross_entropy`` when every row is labelled; no host
    sync (the choice is a tensor op)."""
    ce = F.cross_entropy(logits.float(), y, ignore_index=IGNORE)
    return torch.where(y.ne(IGNORE).any(), ce, torch.zeros_like(ce))


def soft_targets(logits: torch.Tensor, T: float) -> torch.Tensor:
    """Softmax at temperature T: q_i = exp(z_i / T) / sum_j exp(z_j / T)."""
    return F.softmax(logits / T, dim=-1)


def log_softmax_rows(z: torch.Tensor) -> torch.Tensor:
    """log-softmax over the last dim. On CPU, PyTorch's kernel is slow when that dim is short
    (10 classes); running it over dim 0 of the transposed (B, C) matrix computes the same
    values ~2x faster, which is most of what the KD loss adds to a student's step."""
    if z.device.type == "cpu" and z.dim() == 2 and z.shape[1] < 64:
        return F.log_softmax(z.t(), dim=0).t()
    return F.log_softmax(z, dim=-1)


def kl_soft(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    T: float,
    student_T: float | None = None,
) -> torch.Tensor:
    """KL(p_teacher^T || p_student^T), summed over classes, averaged over samples (batchmean);
    ``student_T``: the student's softmax at that temperature instead (1: generalized
    distillation's sigma(f_s(x)) against the teacher's sigma(f_t(x*)/T)).

    Computed in float32 from log-probabilities so that tiny teacher probabilities neither
    underflow nor produce 0 * log 0 NaNs.
    """
    log_p_s = log_softmax_rows(student_logits.float() / (T if student_T is None else student_T))
    log_p_t = log_softmax_rows(teacher_logits.float() / T)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)


def standardize_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-sample z-score (z - mean) / (std + eps) of Sun et al. (CVPR 2024).

    std is the unbiased one (n - 1), as in the authors' code. The result is invariant to a
    per-sample shift and positive scale of the logits: only their relations remain.
    """
    z = logits.float()
    return (z - z.mean(-1, keepdim=True)) / (z.std(-1, keepdim=True) + eps)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    T: float,
    alpha: float,
    standardize: bool = False,
    student_T: float | None = None,
) -> dict[str, torch.Tensor]:
    """Hinton et al. (2015) soft-target loss, split into its weighted named parts.

    ``standardize``: z-score both logit vectors before the temperature softmax of the soft
    term (logit standardization); the hard term always sees the raw student logits.
    ``student_T``: the student's soft-term temperature when it is not T (kl_soft).
    """
    s, t = student_logits, teacher_logits
    if standardize:
        s, t = standardize_logits(s), standardize_logits(t)
    soft = alpha * T * T * kl_soft(s, t, T, student_T)
    hard = (1.0 - alpha) * hard_ce(student_logits, targets)
    return {"soft": soft, "hard": hard}
