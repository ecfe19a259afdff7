"""The matching objectives of dataset condensation, as plain tensor functions.

- Distribution matching (DM; Zhao & Bilen, WACV 2023, eq. 4): for each class c and a randomly
  initialised embedding network psi,
      L_c = || mean_i psi(A(x_real_i)) - mean_j psi(A(s_j)) ||_2^2
  with A the Siamese augmentation; the real side carries no gradient.
- Gradient matching (DC; Zhao et al., ICLR 2021, eq. 10): the layer-wise distance between the
  gradients of the classification loss on a real and on a synthetic batch of one class,
      d(A, B) = sum_i (1 - <A_i., B_i.> / (||A_i.|| ||B_i.|| + 1e-6))
  over the output units i of a layer (rows of the weight reshaped to (out, -1)); 1-d tensors
  (biases, norm scales) contribute nothing, as in the reference ``distance_wb``.
"""

from __future__ import annotations

import torch


def mean_embedding_loss(real: torch.Tensor, syn: torch.Tensor) -> torch.Tensor:
    """|| mean(real) - mean(syn) ||^2 over samples (dim 0); both (N, D) embeddings."""
    return ((real.mean(0) - syn.mean(0)) ** 2).sum()


def layer_gradient_distance(g_real: torch.Tensor, g_syn: torch.Tensor) -> torch.Tensor:
    """DC's per-layer distance: sum over output units of (1 - cosine similarity)."""
    if g_real.dim() == 1:
        return g_syn.new_zeros(())
    a = g_real.reshape(g_real.shape[0], -1)
    b = g_syn.reshape(g_syn.shape[0], -1)
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-6)
    return (1 - cos).sum()


def gradient_match_loss(g_real: list[torch.Tensor], g_syn: list[torch.Tensor]) -> torch.Tensor:
    """Sum of the per-layer distances over all parameter tensors."""
    return sum(
        (layer_gradient_distance(a, b) for a, b in zip(g_real, g_syn, strict=True)),
        g_syn[0].new_zeros(()),
    )
