"""Contrastive representation distillation (Tian et al., ICLR 2020, arXiv 1910.10699).

Student and teacher embeddings (the inputs of their classifiers) are projected by learned
linear maps to ``feat_dim`` and L2-normalised (v_s, v_t). Two memory banks hold one
momentum-averaged, unit-norm vector per training sample: M_s (student side) and M_t (teacher
side). For sample i of the batch, with K negatives n_1..n_K,

    P(i, j) = exp(<v, M[j]> / tau) / Z            (Z fixed from the first batch: mean * N)
    NCE     = -[ log P_pos / (P_pos + K/N)  +  sum_k log (K/N) / (P_neg_k + K/N) ]

averaged over the batch, once with the student as anchor against M_t and once with the
teacher as anchor against M_s; loss = beta * (both). After the step, M[i] <- normalise(
momentum * M[i] + (1 - momentum) * v_i). N is the size of the student's transfer set.

Negatives are drawn uniformly from the transfer set, K per step and shared by the batch (a
(B, K) score matrix instead of RepDistiller's (B, K, d) gather, far cheaper on a CPU).
RepDistiller draws each anchor's K negatives from the *other* classes; here those of the
anchor's own class are masked out and the K_i kept ones of row i are reweighted by K / K_i,
so the negative sum is K times the mean over other-class negatives, as with K draws from
other classes (masking alone would scale its expectation by (N - N_y) / N, 0.9 on 10
balanced classes). K is capped at N - 1 for tiny data sets.

Several processes (DDP): every rank draws the same negatives (a function of seed and step) and
the banks are updated with the embeddings and indices of the GLOBAL batch (all-gathered through
``gather``), so the banks stay identical on every rank; the NCE loss itself is computed on the
rank's local slice of the batch (its anchors), against the shared banks. Z is fixed from the
first global batch (the mean over ranks).
Under ``torch.compile`` the draw, the step counter and the bank update run outside the compiled
graph (``torch.compiler.disable``): the counter is a Python int, which dynamo would otherwise
guard on and recompile for at every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.methods.base import register_method
from kdrun.methods.feature_base import FeatureDistiller, FeatureOptions, check
from kdrun.models.features import Taps, feature_dim, probe


def nce_loss(
    pos: torch.Tensor,
    neg: torch.Tensor,
    n_data: int,
    neg_mask: torch.Tensor | None = None,
    eps: float = 1e-7,
) -> torch.Tensor:
    """NCE with a uniform noise distribution (P_n = 1/n_data) and K = neg.shape[1] draws.

    ``pos`` (B,) and ``neg`` (B, K) are the normalised scores P; ``neg_mask`` (B, K) keeps
    (1) or drops (0) each negative term, and the K_i kept terms of row i are weighted by
    K / K_i: the estimator of K draws from the kept (other-class) population.
    """
    k = neg.shape[1]
    k_pn = k / n_data
    log_d1 = torch.log(pos / (pos + k_pn + eps))
    log_d0 = torch.log(k_pn / (neg + k_pn + eps))
    if neg_mask is not None:
        kept = neg_mask.sum(1, keepdim=True).clamp(min=1)
        log_d0 = log_d0 * neg_mask * (k / kept)
    return -(log_d1.sum() + log_d0.sum()) / pos.shape[0]


@dataclass
class CRDOptions(FeatureOptions):
    name: str = "crd"
    beta: float = 0.8  # RepDistiller -b 0.8 / mdistiller CRD.LOSS.FEAT_WEIGHT
    feat_dim: int = 128  # RepDistiller --feat_dim / mdistiller CRD.FEAT.DIM
    nce_k: int = 16384  # negatives per step; RepDistiller --nce_k / mdistiller CRD.NCE.K
    nce_t: float = 0.07  # temperature tau; RepDistiller --nce_t / mdistiller CRD.NCE.TEMPERATURE
    momentum: float = 0.5  # memory update; RepDistiller --nce_m / mdistiller CRD.NCE.MOMENTUM


def _outside_compiled_graph(cls: type, names: tuple[str, ...]) -> None:
    """``torch.compiler.disable`` on these methods of ``cls``, once, at the first instance:
    as a decorator it would import torch._dynamo (~3 s) with this module, i.e. in every kdrun
    command, compiled or not."""
    if not cls.__dict__.get("_outside_graph", False):
        for name in names:
            setattr(cls, name, torch.compiler.disable(cls.__dict__[name]))
        cls._outside_graph = True


@register_method("crd")
class CRD(FeatureDistiller):
    accepts_unlabelled = False  # other-class negatives need every row's label
    Options = CRDOptions

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        opts: CRDOptions,
        dims: tuple[int, int],
        labels: torch.Tensor,
        pool: torch.Tensor,
        seed: int,
    ):
        """``labels``: every training label (the banks are indexed like data.x_train);
        ``pool``: the indices the student trains on, where negatives come from."""
        super().__init__(student, teacher, opts)
        _outside_compiled_graph(CRD, ("_next_negatives", "_update_memory"))
        self.use_embedding = True
        d = opts.feat_dim
        self.embed_s = nn.Linear(dims[0], d)
        self.embed_t = nn.Linear(dims[1], d)
        n = len(labels)
        g = torch.Generator().manual_seed(seed)
        stdv = 1.0 / math.sqrt(d / 3)  # RepDistiller's uniform init of both banks
        self.register_buffer("memory_s", (torch.rand(n, d, generator=g) * 2 - 1) * stdv)
        self.register_buffer("memory_t", (torch.rand(n, d, generator=g) * 2 - 1) * stdv)
        self.register_buffer("z", torch.full((2,), -1.0))  # < 0: not yet set
        self.register_buffer("labels", labels.detach().clone(), persistent=False)
        self.register_buffer("pool", pool.detach().clone(), persistent=False)
        self.n_data = len(pool)
        self.k = max(1, min(opts.nce_k, self.n_data - 1))
        self.seed = seed
        self._step = 0  # in the state dict (extra state): negatives replay exactly on resume
        self._gen = torch.Generator()
        # all-gather over ranks (set by the DDP wrapper); the identity in one process
        self.gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t

    def get_extra_state(self) -> Any:
        return {"step": self._step}

    def set_extra_state(self, state: Any) -> None:
        self._step = int(state["step"])

    @classmethod
    def check_options(cls, opts, cfg) -> None:
        check(opts.feat_dim >= 1, f"method.feat_dim must be >= 1 (got {opts.feat_dim})")
        check(opts.nce_k >= 1, f"method.nce_k must be >= 1 (got {opts.nce_k})")
        check(opts.nce_t > 0, f"method.nce_t must be > 0 (got {opts.nce_t}); try 0.07")
        check(0 <= opts.momentum < 1, f"method.momentum must be in [0, 1) (got {opts.momentum})")

    @classmethod
    def create(cls, cfg, ctx):
        opts = cls.options(cfg.method)
        student, teacher = ctx.new_student(), ctx.teacher()
        shape = cls.in_shape(ctx)
        dims = (
            feature_dim(probe(student, shape, embedding=True).embedding),
            feature_dim(probe(teacher, shape, embedding=True).embedding),
        )
        d = ctx.data
        return cls(student, teacher, opts, dims, d.y_train, d.student_idx, cfg.seed)

    def negatives(self) -> torch.Tensor:
        """K indices into the training split, a function of (seed, step) only."""
        self._gen.manual_seed(self.seed * 1_000_003 + self._step)
        pick = torch.randint(self.n_data, (self.k,), generator=self._gen)
        if self.pool.device.type == "cuda":  # drawn on the CPU (same draws), copied async
            pick = pick.pin_memory().to(self.pool.device, non_blocking=True)
        return self.pool[pick]

    def _next_negatives(self) -> torch.Tensor:
        """This step's negatives; a training step then advances the counter."""
        neg = self.negatives()
        if self.training:
            self._step += 1
        return neg

    def feature_losses(self, s: Taps, t: Taps, y, idx):
        v_s = F.normalize(self.embed_s(s.embedding.float().flatten(1)), dim=1)
        v_t = F.normalize(self.embed_t(t.embedding.float().flatten(1)), dim=1)
        neg = self._next_negatives()
        keep = (self.labels[neg][None, :] != y[:, None]).float()  # other-class negatives only
        tau = self.opts.nce_t

        def scores(v: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
            pos = (v * memory[idx]).sum(1, keepdim=True)
            return torch.exp(torch.cat([pos, v @ memory[neg].t()], 1) / tau)

        e_s = scores(v_s, self.memory_t)  # student anchors against the teacher bank
        e_t = scores(v_t, self.memory_s)  # teacher anchors against the student bank
        if self.training:  # Z: fixed once, from the first batch (as RepDistiller)
            first = torch.stack([e_s.detach().mean(), e_t.detach().mean()]) * self.n_data
            first = self.gather(first[None]).mean(0)  # the same Z on every rank
            self.z.copy_(torch.where(self.z < 0, first, self.z))
        p_s, p_t = e_s / self.z[0], e_t / self.z[1]
        loss = nce_loss(p_s[:, 0], p_s[:, 1:], self.n_data, keep) + nce_loss(
            p_t[:, 0], p_t[:, 1:], self.n_data, keep
        )
        if self.training:
            self._update_memory(idx, v_s.detach(), v_t.detach())
        return {"crd": self.opts.beta * loss}

    @torch.no_grad()
    def _update_memory(self, idx: torch.Tensor, v_s: torch.Tensor, v_t: torch.Tensor) -> None:
        idx, v_s, v_t = self.gather(idx), self.gather(v_s), self.gather(v_t)
        m = self.opts.momentum
        self.memory_s[idx] = F.normalize(self.memory_s[idx] * m + v_s * (1 - m), dim=1)
        self.memory_t[idx] = F.normalize(self.memory_t[idx] * m + v_t * (1 - m), dim=1)
