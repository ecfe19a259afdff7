"""Deep mutual learning (Zhang, Xiang, Hospedales, Lu; CVPR 2018, arXiv 1706.00384).

No pre-trained teacher: K students (peers) train together from scratch, each on the labels
and on the others' current predictions. For peer k, with the others' predictions detached
(each peer is the target of the others, not moved by them through this term):

    L_k = CE(z_k, y) + weight * T^2 * 1/(K-1) * sum_{l != k} KL(p_l^T || p_k^T)

Peer 0 is the run's student (the baseline's init), selected on validation like any student;
peers 1.. start from their own seeds. Every peer's test accuracy is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdrun.engine import accuracy
from kdrun.errors import ConfigError
from kdrun.methods.base import Distiller, MethodOptions, register_method
from kdrun.methods.losses import hard_ce, kl_soft
from kdrun.models import count_params

SEED_STRIDE = 1000  # peer k starts from seed + 1 + 1000 k: never another run's student init


@dataclass
class DMLOptions(MethodOptions):
    name: str = "dml"
    peers: int = 2  # students trained together, the run's student included
    weight: float = 1.0  # weight of the mimicry (KL) term; the CE term has weight 1


def mutual_losses(
    logits: list[torch.Tensor], y: torch.Tensor, T: float, weight: float
) -> dict[str, torch.Tensor]:
    """DML's loss of every peer, as named parts: hard_p<k> and kl_p<k>."""
    k_peers = len(logits)
    out: dict[str, torch.Tensor] = {}
    for k, z in enumerate(logits):
        out[f"hard_p{k}"] = hard_ce(z, y)
        if k_peers > 1:
            kl = sum(kl_soft(z, other.detach(), T) for j, other in enumerate(logits) if j != k)
            out[f"kl_p{k}"] = weight * T * T * kl / (k_peers - 1)
    return out


@register_method("dml")
class DML(Distiller):
    accepts_unlabelled = True  # labels enter through hard_ce only
    Options = DMLOptions
    needs_teacher = False
    cacheable = False

    def __init__(self, peers: list[nn.Module], T: float, weight: float):
        super().__init__(peers[0], None)
        self.others = nn.ModuleList(peers[1:])
        self.T, self.weight = T, weight

    @property
    def peers(self) -> list[nn.Module]:
        return [self.student, *self.others]

    @classmethod
    def check_config(cls, cfg) -> None:
        opts = cls.options(cfg.method)
        if opts.peers < 2:
            raise ConfigError(f"method.peers must be >= 2 (got {opts.peers}); DML needs peers")
        if opts.weight < 0:
            raise ConfigError(f"method.weight must be >= 0 (got {opts.weight})")

    @classmethod
    def build(cls, cfg, ctx):
        opts = cls.options(cfg.method)
        peers = [ctx.new_student()]
        peers += [
            ctx.new_student(seed=cfg.seed + 1 + SEED_STRIDE * k) for k in range(1, opts.peers)
        ]
        return cls(peers, cfg.T, opts.weight)

    def forward(self, x, y, idx, teacher_out):
        logits = [peer(x) for peer in self.peers]
        return logits[0], mutual_losses(logits, y, self.T, self.weight)

    def extra_metrics(self, ctx) -> dict[str, Any]:
        y, model = ctx.data.y_test, ctx.cfg.student.name
        accs = [accuracy(ctx.evaluate(peer), y) for peer in self.peers]
        # The loop selects peer 0 (the student) on validation; the others are their last
        # epoch. Their training time is the student's: they train in the same steps.
        extra = {
            f"peer{k}": {
                "model": model,
                "params": count_params(peer),
                "test_acc": accs[k],
                "val_acc": float("nan"),
                "last_test_acc": accs[k],
                "best_epoch": 0,
                "train_seconds": 0.0,
                "from_cache": False,
            }
            for k, peer in enumerate(self.peers)
            if k > 0
        }
        peers = [
            {"peer": k, "test_acc": a, "weights": "best_val" if k == 0 else "last_epoch"}
            for k, a in enumerate(accs)
        ]
        return {"extra_models": extra, "peers": peers}
