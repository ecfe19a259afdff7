"""Losses that train an image generator against a frozen teacher, with no real data.

DAFL (Chen et al., ICCV 2019, eqs. 3-6), for a batch of n generated images with teacher
logits y_i, teacher features f_i (the classifier's input) and p = mean_i softmax(y_i):
  - one-hot:      L_oh = (1/n) sum_i CE(y_i, argmax_k y_ik)   (confident teacher outputs)
  - activation:   L_a  = -(1/n) sum_i ||f_i||_1 / dim(f)       (DAFL code: -f.abs().mean())
  - info entropy: L_ie = -H(p) = sum_k p_k log p_k            (classes balanced in a batch;
                  natural log here; DAFL's code uses log10, i.e. L_ie / ln 10)
DeepInversion (Yin et al., CVPR 2020, eq. 4): for each BatchNorm layer l with running
statistics (mu_l, sigma2_l) and the batch statistics of its input (mu_l(x), sigma2_l(x)),
  L_bn = sum_l ||mu_l(x) - mu_l||_2 + ||sigma2_l(x) - sigma2_l||_2   (norms, not squared).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def one_hot_loss(teacher_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the teacher's logits against its own arg-max."""
    return F.cross_entropy(teacher_logits, teacher_logits.argmax(1))


def activation_loss(features: torch.Tensor) -> torch.Tensor:
    """Minus the mean absolute feature activation."""
    return -features.abs().mean()


def information_entropy_loss(teacher_logits: torch.Tensor) -> torch.Tensor:
    """Minus the entropy of the batch-mean class distribution (minimised when balanced)."""
    p = F.softmax(teacher_logits.float(), dim=1).mean(0)
    return (p * torch.log(p.clamp_min(1e-12))).sum()


def bn_statistics_loss(x: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """DeepInversion's distance of the batch statistics of ``x`` (a BN layer's input) from the
    layer's running statistics (population variance of the batch, as BN normalises with)."""
    dims = [0, *range(2, x.dim())]
    mean = x.mean(dims)
    var = x.var(dims, unbiased=False)
    return torch.norm(mean - bn.running_mean, 2) + torch.norm(var - bn.running_var, 2)


class BNStatistics:
    """Forward hooks on every BatchNorm layer of a network, summing ``bn_statistics_loss``
    over the layers for the latest forward pass."""

    def __init__(self, net: nn.Module) -> None:
        self.layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.terms: list[torch.Tensor] = []
        self.handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module: nn.Module, args: tuple, _out: torch.Tensor) -> None:
        self.terms.append(bn_statistics_loss(args[0], module))

    def reset(self) -> None:
        self.terms = []

    def loss(self) -> torch.Tensor:
        return sum(self.terms[1:], self.terms[0]) if self.terms else torch.zeros(())
