"""Condensers: one step of learning the synthetic images, per method (a registry, by name).

Each step draws a freshly initialised matching network (the methods' premise: images that
match under *random* networks carry the class's information, not one network's quirks). All
randomness (network init, real batches, augmentation) comes from one generator whose state is
checkpointed, so an interrupted condensation resumes on the same path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.condense.augment import dsa, parse_strategy
from kdrun.condense.losses import gradient_match_loss, mean_embedding_loss
from kdrun.condense.options import CondenseConfig, dc_loops
from kdrun.methods.base import registrar

NetFactory = Callable[[], nn.Module]


def embedder(net: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The network's embedding: ``net.embed`` if it has one, else the input of its
    classifier (``kd_head``), captured by a forward pre-hook."""
    if hasattr(net, "embed"):
        return net.embed
    head = net.get_submodule(net.kd_head)
    seen: list[torch.Tensor] = []
    head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))

    def embed(x: torch.Tensor) -> torch.Tensor:
        seen.clear()
        net(x)
        return seen[0].flatten(1)

    return embed


class Condenser:
    """Learns ``images`` (a leaf tensor, class-major, ``ipc`` rows per class)."""

    name: ClassVar[str] = "?"

    def __init__(
        self,
        opts: CondenseConfig,
        make_net: NetFactory,
        x_real: torch.Tensor,
        rows: list[torch.Tensor],
        images: torch.Tensor,
        gen: torch.Generator,
    ) -> None:
        self.opts, self.make_net, self.x_real, self.rows, self.gen = (
            opts,
            make_net,
            x_real,
            rows,
            gen,
        )
        self.images = images.requires_grad_(True)
        self.ipc = len(images) // len(rows)
        self.ops = parse_strategy(opts.dsa_strategy) if opts.dsa else []
        self.opt = torch.optim.SGD([self.images], lr=opts.lr_img, momentum=opts.momentum)

    def fresh_net(self) -> nn.Module:
        torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=self.gen)))
        return self.make_net().to(self.images.device).train()

    def real_batch(self, c: int) -> torch.Tensor:
        r = self.rows[c]
        pick = torch.randperm(len(r), generator=self.gen)[: self.opts.batch_real]
        return self.x_real[r[pick.to(r.device)]]

    def syn_batch(self, c: int) -> torch.Tensor:
        return self.images[c * self.ipc : (c + 1) * self.ipc]

    def siamese(self, real: torch.Tensor, syn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same augmentation on both sides: two generators from one drawn seed."""
        if not self.ops:
            return real, syn
        seed = int(torch.randint(2**31 - 1, (1,), generator=self.gen))
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        return dsa(real, self.ops, g1, True), dsa(syn, self.ops, g2, True)

    def update(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def step(self) -> float:
        """One iteration; returns its mean matching loss per class."""
        raise NotImplementedError


CONDENSERS: dict[str, type[Condenser]] = {}


register_condenser = registrar(CONDENSERS)


@register_condenser("dm")
class DistributionMatching(Condenser):
    """DM: per class, match the mean embedding of real and synthetic images under one random
    network (its weights frozen: only the pixels learn)."""

    def step(self) -> float:
        net = self.fresh_net().requires_grad_(False)
        embed = embedder(net)
        loss = self.images.new_zeros(())
        for c in range(len(self.rows)):
            real, syn = self.siamese(self.real_batch(c), self.syn_batch(c))
            with torch.no_grad():
                e_real = embed(real)
            loss = loss + mean_embedding_loss(e_real, embed(syn))
        self.update(loss)
        return float(loss.detach()) / len(self.rows)


@register_condenser("dc")
class GradientMatching(Condenser):
    """DC: per class, match the gradient of the loss on real and on synthetic images; between
    image updates the network trains a few epochs on the synthetic set (DC's inner loop)."""

    def step(self) -> float:
        net = self.fresh_net()
        params = [p for p in net.parameters() if p.requires_grad]
        net_opt = torch.optim.SGD(params, lr=self.opts.lr_net)
        outer, inner = dc_loops(self.ipc, self.opts.outer_loop, self.opts.inner_loop)
        total = 0.0
        for ol in range(outer):
            loss = self.images.new_zeros(())
            for c in range(len(self.rows)):
                loss = loss + self.class_distance(net, params, c)
            self.update(loss)
            total += float(loss.detach())
            if ol < outer - 1:
                self.train_net(net, net_opt, inner)
        return total / (outer * len(self.rows))

    def class_distance(self, net: nn.Module, params: list, c: int) -> torch.Tensor:
        real, syn = self.siamese(self.real_batch(c), self.syn_batch(c))
        y_real = torch.full((len(real),), c, device=real.device)
        y_syn = torch.full((len(syn),), c, device=syn.device)
        g_real = torch.autograd.grad(F.cross_entropy(net(real), y_real), params)
        g_real = [g.detach() for g in g_real]
        g_syn = torch.autograd.grad(F.cross_entropy(net(syn), y_syn), params, create_graph=True)
        return gradient_match_loss(g_real, list(g_syn))

    def train_net(self, net: nn.Module, opt: torch.optim.Optimizer, epochs: int) -> None:
        x = self.images.detach()
        y = torch.arange(len(self.rows), device=x.device).repeat_interleave(self.ipc)
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=self.gen).split(self.opts.batch_train):
                xb = dsa(x[idx], self.ops, self.gen, siamese=False)
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(net(xb), y[idx]).backward()
                opt.step()
