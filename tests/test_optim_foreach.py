"""kdrun's optimisers use torch's foreach implementation on every device: it must give exactly
the bits of torch's per-tensor loop (the default on a CPU), or a run's numbers would change
with it."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from kdrun.engine.optim import make_optimizer


def _recipe(optimizer: str):
    return OmegaConf.create(
        {
            "optimizer": optimizer,
            "lr": 0.01,
            "weight_decay": 5e-4,
            "momentum": 0.9,
            "nesterov": True,
        }
    )


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int = 30) -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = torch.randn(16, 20, generator=gen), torch.randint(0, 5, (16,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_foreach_optimizer_matches_the_per_tensor_loop_bit_for_bit(optimizer):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(20, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(), torch.nn.Linear(32, 5)
    )
    ours, ref = copy.deepcopy(net), copy.deepcopy(net)
    opt = make_optimizer(ours.parameters(), _recipe(optimizer))
    assert opt.defaults["foreach"] is True
    r = _recipe(optimizer)
    if optimizer == "sgd":
        ref_opt = torch.optim.SGD(
            ref.parameters(),
            lr=r.lr,
            momentum=r.momentum,
            nesterov=True,
            weight_decay=r.weight_decay,
            foreach=False,
        )
    else:
        cls = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
        ref_opt = cls(ref.parameters(), lr=r.lr, weight_decay=r.weight_decay, foreach=False)
    _train(ours, opt)
    _train(ref, ref_opt)
    for (name, a), b in zip(ours.named_parameters(), ref.parameters(), strict=True):
        assert not torch.equal(a, net.state_dict()[name]), name  # it did train
        assert torch.equal(a, b), name
