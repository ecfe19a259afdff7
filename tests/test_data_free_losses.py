"""Data-free distillation: each generator loss against its written formula and a property."""

from __future__ import annotations

import math

import torch
from torch import nn

from kdrun.methods.data_free_losses import (
    BNStatistics,
    activation_loss,
    bn_statistics_loss,
    information_entropy_loss,
    one_hot_loss,
)
from kdrun.models.generator import Generator


def test_one_hot_loss_formula_and_minimum_at_confident_outputs():
    z = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    want = 0.0
    for row in z:
        p = torch.softmax(row, 0)
        want += -math.log(float(p.max()))
    assert math.isclose(float(one_hot_loss(z)), want / 2, rel_tol=1e-6)
    # confident logits drive it toward 0
    assert float(one_hot_loss(z * 50)) < 1e-6 < float(one_hot_loss(z))


def test_activation_loss_is_minus_mean_absolute_activation():
    f = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    assert float(activation_loss(f)) == -(1 + 2 + 0.5 + 0) / 4
    assert float(activation_loss(2 * f)) == 2 * float(activation_loss(f))  # scales linearly


def test_information_entropy_loss_formula_and_minimum_when_balanced():
    z = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    p = torch.softmax(z, 1).mean(0)
    want = float((p * p.log()).sum())
    assert math.isclose(float(information_entropy_loss(z)), want, rel_tol=1e-6)
    # a batch that covers every class with confident outputs reaches -log(C), the minimum
    balanced = torch.eye(3) * 40
    assert math.isclose(float(information_entropy_loss(balanced)), -math.log(3), rel_tol=1e-5)
    one_class = torch.tensor([[40.0, 0, 0]] * 3)
    assert float(information_entropy_loss(one_class)) > -1e-5  # entropy ~0: loss ~0


def test_bn_statistics_loss_formula_and_zero_at_running_statistics():
    bn = nn.BatchNorm2d(2)
    bn.running_mean = torch.tensor([0.5, -1.0])
    bn.running_var = torch.tensor([2.0, 0.5])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 3, 3, generator=g)
    mean = x.mean((0, 2, 3))
    var = ((x - mean.view(1, 2, 1, 1)) ** 2).mean((0, 2, 3))
    want = float(((mean - bn.running_mean) ** 2).sum().sqrt()) + float(
        ((var - bn.running_var) ** 2).sum().sqrt()
    )
    assert math.isclose(float(bn_statistics_loss(x, bn)), want, rel_tol=1e-5)
    # a batch standardised to the running statistics scores 0
    z = (x - mean.view(1, 2, 1, 1)) / var.sqrt().view(1, 2, 1, 1)
    z = z * bn.running_var.sqrt().view(1, 2, 1, 1) + bn.running_mean.view(1, 2, 1, 1)
    assert float(bn_statistics_loss(z, bn)) < 1e-5


def test_bn_hooks_sum_over_every_batchnorm_layer():
    net = nn.Sequential(
        nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)
    ).eval()
    stats = BNStatistics(net)
    x = torch.randn(3, 1, 4, 4)
    net(x)
    got, n_terms = stats.loss(), len(stats.terms)
    h = net[0](x)
    want = bn_statistics_loss(h, net[1]) + bn_statistics_loss(net[2](net[1](h)), net[3])
    assert n_terms == 2 and torch.allclose(got, want)
    stats.reset()
    assert stats.terms == []


def test_generator_makes_normalised_images_of_any_side():
    for shape in [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 10, 10)]:
        g = Generator(shape, latent_dim=16, width=8)
        with torch.no_grad():
            x = g(g.sample(5, torch.Generator().manual_seed(0)))
        assert x.shape == (5, *shape)
        if shape[1] % 4 == 0:  # the last BN (train mode) standardises each channel
            assert abs(float(x.mean())) < 1e-4 and abs(float(x.std(unbiased=False)) - 1) < 1e-2
