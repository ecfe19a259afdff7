"""Dataset condensation: each matching loss against its written formula and a property, the
augmentation's differentiability and Siamese property, the loop's exact resume."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from kdrun.condense import (
    AUGMENTS,
    CondenseConfig,
    SyntheticSet,
    class_rows,
    condense_images,
    dc_loops,
    dsa,
    embedder,
    gradient_match_loss,
    initial_images,
    layer_gradient_distance,
    mean_embedding_loss,
    parse_strategy,
    save_grid,
)
from kdrun.errors import ConfigError, Interrupted
from kdrun.experiments.condense import check_class_counts, check_options


def test_mean_embedding_loss_formula_and_zero_at_equal_means():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, generator=g), torch.randn(3, 5, generator=g)
    want = sum((float(a[:, k].mean()) - float(b[:, k].mean())) ** 2 for k in range(5))
    assert math.isclose(float(mean_embedding_loss(a, b)), want, rel_tol=1e-5)
    # zero whenever the means agree, whatever the spread
    c = b - b.mean(0) + a.mean(0)
    assert float(mean_embedding_loss(a, c)) < 1e-10
    # gradient w.r.t. the synthetic side: 2 (mean_s - mean_r) / n_s per row
    s = b.clone().requires_grad_(True)
    mean_embedding_loss(a, s).backward()
    assert torch.allclose(s.grad, (2 * (b.mean(0) - a.mean(0)) / 3).expand(3, 5), atol=1e-6)


def test_layer_gradient_distance_formula():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    want = 0.0
    for i in range(4):
        u, v = a[i].flatten(), b[i].flatten()
        want += 1 - float(u @ v) / (float(u.norm()) * float(v.norm()) + 1e-6)
    assert math.isclose(float(layer_gradient_distance(a, b)), want, rel_tol=1e-5)
    # properties: ~0 for parallel rows of any positive scale, 2 per row when opposite
    assert float(layer_gradient_distance(a, 3 * a)) < 1e-5
    assert math.isclose(float(layer_gradient_distance(a, -a)), 8.0, rel_tol=1e-5)
    # biases (1-d) are ignored, as in DC's distance_wb
    assert float(layer_gradient_distance(torch.ones(5), -torch.ones(5))) == 0.0
    total = gradient_match_loss([a, torch.ones(5)], [b, -torch.ones(5)])
    assert math.isclose(float(total), want, rel_tol=1e-5)


@pytest.mark.parametrize("op", sorted(AUGMENTS))
def test_dsa_ops_are_differentiable_and_siamese(op):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 1, 8, 8, generator=g, requires_grad=True)
    out = AUGMENTS[op](x, torch.Generator().manual_seed(5), 6)
    assert out.shape == x.shape
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # Siamese: the same seed gives the same transform to two different batches; an image that
    # appears in both is transformed identically
    y = torch.cat([x.detach()[:1], torch.randn(2, 1, 8, 8, generator=g)])
    a = dsa(x.detach(), [op], torch.Generator().manual_seed(9), siamese=True)
    b = dsa(y, [op], torch.Generator().manual_seed(9), siamese=True)
    assert torch.allclose(a[0], b[0], atol=1e-6)


def test_crop_translates_by_whole_pixels_with_zero_fill():
    x = torch.arange(64.0).view(1, 1, 8, 8)
    for seed in range(10):
        out = AUGMENTS["crop"](x, torch.Generator().manual_seed(seed), 1)
        vals = set(out.flatten().tolist()) - {0.0}
        assert vals <= set(x.flatten().tolist())  # only original pixel values (or zeros)


def test_parse_strategy_rejects_unknown_ops():
    assert parse_strategy("none") == []
    assert parse_strategy("crop_flip") == ["crop", "flip"]
    with pytest.raises(ValueError, match="blur"):
        parse_strategy("crop_blur")


def test_dc_loops_follow_the_reference_table():
    assert dc_loops(1) == (1, 1) and dc_loops(10) == (10, 50) and dc_loops(50) == (50, 10)
    assert dc_loops(15) == (10, 50) and dc_loops(10, 3, 2) == (3, 2)


def test_initial_images_real_are_distinct_rows_of_each_class():
    x = torch.arange(40.0).view(40, 1, 1, 1)
    y = torch.arange(4).repeat(10)
    rows = class_rows(y, 4)
    img = initial_images(x, rows, 3, "real", torch.Generator().manual_seed(0))
    assert img.shape == (12, 1, 1, 1)
    for c in range(4):
        vals = img[3 * c : 3 * c + 3].flatten().long()
        assert (y[vals] == c).all() and len(set(vals.tolist())) == 3
    noise = initial_images(x, rows, 2, "noise", torch.Generator().manual_seed(0))
    assert noise.shape == (8, 1, 1, 1)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.ReLU())
        self.fc = nn.Linear(6, 3)
        self.kd_head = "fc"

    def forward(self, x):
        return self.fc(self.body(x))


def test_embedder_is_the_classifier_input():
    net = _Tiny()
    x = torch.randn(5, 1, 4, 4)
    assert torch.allclose(embedder(net)(x), net.body(x))


def _toy(n_per=20, classes=3):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(classes).repeat_interleave(n_per)
    x = torch.randn(len(y), 1, 4, 4, generator=g) + y.view(-1, 1, 1, 1).float()
    return x, y


@pytest.mark.parametrize("method", ["dm", "dc"])
def test_condensation_resumes_exactly_after_a_stop(method, tmp_path):
    x, y = _toy()
    opts = CondenseConfig(
        method=method,
        ipc=2,
        iterations=6,
        batch_real=8,
        lr_img=0.1,
        init="noise",
        checkpoint_every=2,
        outer_loop=2,
        inner_loop=1,
        dsa_strategy="crop_flip",
    )
    full = condense_images(opts, _Tiny, x, y, 3, seed=0)
    assert full.images.shape == (6, 1, 4, 4) and full.labels.tolist() == [0, 0, 1, 1, 2, 2]
    ck = tmp_path / "ck.pt"
    calls = {"n": 0}

    def stop() -> bool:  # stop before iteration 4 (after the checkpoint of iteration 4)
        calls["n"] += 1
        return calls["n"] == 5

    with pytest.raises(Interrupted):
        condense_images(opts, _Tiny, x, y, 3, 0, checkpoint=ck, fingerprint="f", should_stop=stop)
    resumed = condense_images(opts, _Tiny, x, y, 3, 0, checkpoint=ck, fingerprint="f")
    assert resumed.resumed_from == 4
    assert torch.allclose(resumed.images, full.images, atol=1e-6)
    assert resumed.losses == pytest.approx(full.losses)
    # another fingerprint never resumes someone else's images
    other = condense_images(opts, _Tiny, x, y, 3, 0, checkpoint=ck, fingerprint="g")
    assert other.resumed_from == 0


def test_dm_moves_synthetic_means_toward_the_real_ones():
    x, y = _toy()
    opts = CondenseConfig(
        method="dm", ipc=2, iterations=40, batch_real=20, lr_img=1.0, init="noise", dsa=False
    )
    res = condense_images(opts, _Tiny, x, y, 3, seed=0)
    assert sum(res.losses[-5:]) < 0.5 * sum(res.losses[:5])


def test_synthetic_set_roundtrip_and_grid(tmp_path):
    syn = SyntheticSet(
        torch.randn(6, 1, 4, 4),
        torch.arange(3).repeat_interleave(2),
        torch.tensor([0.5]),
        torch.tensor([0.25]),
        torch.randn(6, 3),
        4.0,
        "toy",
        ["a", "b", "c"],
    )
    torch.save(syn.to_payload(), tmp_path / "s.pt")
    back = SyntheticSet.from_payload(torch.load(tmp_path / "s.pt", weights_only=True))
    assert back.ipc == 2 and torch.equal(back.images, syn.images) and back.T == 4.0
    assert float(back.pixels().min()) >= 0 and float(back.pixels().max()) <= 1
    save_grid(back, tmp_path / "grid.png", "toy")
    assert (tmp_path / "grid.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"method": "dd"}, "unknown condense.method 'dd'; choose one of: dc, dm"),
        ({"init": "zeros"}, "condense.init must be real or noise"),
        ({"ipc": 0}, "condense.ipc must be >= 1"),
        ({"dsa_strategy": "crop_blur"}, "condense.dsa_strategy: unknown DSA op"),
    ],
)
def test_condense_options_are_checked_before_any_work(override, message):
    cfg = OmegaConf.create({"condense": override})
    with pytest.raises(ConfigError, match=message):
        check_options(cfg)


def test_ipc_beyond_a_class_count_with_real_init_is_one_line():
    y = torch.tensor([0, 0, 0, 1, 1])
    opts = CondenseConfig(ipc=3, init="real")
    with pytest.raises(ConfigError, match="class 1 has only 2 training images.*init=noise"):
        check_class_counts(opts, y, 2)
    check_class_counts(CondenseConfig(ipc=3, init="noise"), y, 2)  # noise needs no real rows
