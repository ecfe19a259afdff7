"""The data-free distiller: who learns from what, and that its state resumes."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from kdrun.config import TrainConfig
from kdrun.data import DataBundle
from kdrun.engine import fit
from kdrun.errors import ConfigError, Interrupted
from kdrun.methods.data_free import DataFree, DataFreeOptions
from kdrun.methods.data_free_losses import activation_loss, information_entropy_loss, one_hot_loss
from kdrun.models.generator import Generator


class _Net(nn.Module):
    def __init__(self, bn: bool = True):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4) if bn else nn.Identity(),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(4, 3)
        self.kd_head = "fc"

    def forward(self, x):
        return self.fc(self.body(x))


def _distiller(**kw) -> DataFree:
    torch.manual_seed(0)
    teacher, student = _Net().eval(), _Net()
    gen = Generator((1, 8, 8), latent_dim=8, width=8)
    return DataFree(student, teacher, gen, DataFreeOptions(**kw), T=4.0, alpha=0.9, seed=0)


def _params(m: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def _changed(before, m) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, m.parameters(), strict=True))


@pytest.mark.parametrize("adversarial", [False, True])
def test_forward_updates_the_generator_not_the_student_or_teacher(adversarial):
    d = _distiller(adversarial=adversarial, bn_weight=0.1)
    s0, t0, g0 = _params(d.student), _params(d.teacher), _params(d.generator)
    idx = torch.arange(16)
    logits, losses = d(torch.zeros(16, 0), torch.zeros(16, dtype=torch.long), idx, None)
    assert logits.shape == (16, 3)
    assert _changed(g0, d.generator)  # stepped inside forward, by its own optimiser
    assert not _changed(s0, d.student) and not _changed(t0, d.teacher)
    assert "gen_bn" in losses and ("gen_adv" in losses) == adversarial
    # the student's loss reaches the student only: the images it sees are detached
    sum(v for k, v in losses.items() if not k.startswith("gen_")).backward()
    assert all(p.grad is not None for p in d.student.parameters())
    assert all(p.grad is None for p in d.generator.parameters())
    assert all(p.grad is None for p in d.teacher.parameters())
    assert d.trainable_parameters() == list(d.student.parameters())


def test_train_acc_scores_the_generated_batch_against_the_teacher_not_the_stand_in():
    torch.manual_seed(0)
    teacher = _Net(bn=False).eval()
    student = _Net(bn=False)
    student.load_state_dict(teacher.state_dict())  # agrees with the teacher everywhere
    gen = Generator((1, 8, 8), latent_dim=8, width=8)
    d = DataFree(student, teacher, gen, DataFreeOptions(), T=4.0, alpha=0.9, seed=0)
    stand_in = torch.full((64,), -1)  # the placeholder split's labels: never a class
    logits, _ = d(torch.zeros(64, 0), stand_in, torch.arange(64), None)
    assert torch.equal(d.accuracy_targets(stand_in), logits.argmax(1))
    assert (d.accuracy_targets(stand_in) >= 0).all()  # classes, not the stand-in's -1


def test_a_dead_generator_is_reinitialised_at_the_next_check_and_counted():
    from kdrun.methods import data_free

    d, live = _distiller(), _distiller()
    last = d.generator.block2[3]  # the conv before tanh: saturate it, as lr_G 0.2 can
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(50.0)  # tanh = 1 everywhere, the final BN maps it to 0: no gradient
    y = torch.zeros(8, dtype=torch.long)
    d(torch.zeros(8, 0), y, torch.arange(8), None)  # step 1: not a check step
    assert d.generator_restarts == 0 and last.bias.min() == 50.0
    rng = torch.get_rng_state()
    for m in (d, live):
        m.steps = data_free.ALIVE_CHECK_EVERY - 1
        m(torch.zeros(8, 0), y, torch.arange(8), None)
    assert torch.equal(torch.get_rng_state(), rng)  # the restart draws from its own seed
    assert (d.generator_restarts, live.generator_restarts) == (1, 0)
    assert last.bias.abs().max() < 1.0
    assert d.generator(d.generator.sample(8)).abs().amax() > 0.1  # images again
    assert d.get_extra_state()["restarts"] == 1 and d.g_opt.param_groups[0]["params"][0] is (
        d.generator.fc.weight
    )


def test_dafl_generator_loss_is_the_weighted_sum_of_its_terms():
    d = _distiller(oh_weight=2.0, activation_weight=0.5, ie_weight=3.0)
    x = torch.randn(8, 1, 8, 8)
    parts = d.generator_losses(x)
    t = d.teacher(x)
    feats = d.teacher.body(x)
    assert torch.allclose(parts["gen_oh"], 2.0 * one_hot_loss(t))
    assert torch.allclose(parts["gen_act"], 0.5 * activation_loss(feats))
    assert torch.allclose(parts["gen_ie"], 3.0 * information_entropy_loss(t))


def test_adversarial_generator_ascends_the_student_teacher_divergence():
    d = _distiller(adversarial=True, generator_lr=0.05)
    z = d.generator.sample(64, torch.Generator().manual_seed(3))
    before = -float(d.generator_losses(d.generator(z))["gen_adv"].detach())
    for _ in range(5):
        d.generator_step(64)
    after = -float(d.generator_losses(d.generator(z))["gen_adv"].detach())
    assert after > before  # the generator found images the student gets more wrong


def test_extra_state_roundtrips_generator_optimiser_and_counters():
    d = _distiller()
    for _ in range(3):
        d(torch.zeros(8, 0), torch.zeros(8, dtype=torch.long), torch.arange(8), None)
    d.generator_restarts = 2
    state = d.state_dict()
    e = _distiller()
    e.load_state_dict(state)
    assert (e.steps, e.generator_updates, e.samples_seen) == (3, 3, 24)
    assert e.generator_restarts == 2
    assert torch.equal(e.z_gen.get_state(), d.z_gen.get_state())
    g_state = e.g_opt.state_dict()["state"]
    assert g_state and all(int(s["step"]) == 3 for s in g_state.values())


class _Ctx:
    """A BuildContext stand-in: a teacher and a student of one tiny conv net."""

    def __init__(self, shape):
        self.data = type("D", (), {"in_shape": shape, "num_classes": 3})()

    def teacher(self):
        return _Net()

    def new_student(self, seed=None):
        return _Net()


def _cfg(**method):
    return OmegaConf.create(
        {
            "method": {"name": "data_free", **method},
            "seed": 0,
            "T": 4.0,
            "alpha": 0.9,
            "dataset": {"name": "toy"},
            "teacher": {"name": "lenet5", "train": {}},
        }
    )


def test_a_generator_for_a_non_image_data_set_is_one_line():
    with pytest.raises(ConfigError, match="generates images.*not \\(C, H, W\\) images"):
        DataFree.build(_cfg(), _Ctx((64,)))


def test_bn_weight_with_a_teacher_without_batchnorm_is_one_line():
    with pytest.raises(ConfigError, match="teacher=lenet5 has no BatchNorm layer"):
        DataFree.build(_cfg(bn_weight=0.1), _Ctx((1, 8, 8)))


def test_bad_options_are_one_line():
    with pytest.raises(ConfigError, match="method.steps_per_epoch must be >= 1"):
        DataFree.check_config(_cfg(steps_per_epoch=0))
    with pytest.raises(ConfigError, match="method.generatr_lr"):
        DataFree.check_config(_cfg(generatr_lr=0.1))


def _digits_like():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 1, 8, 8, generator=g)
    y = torch.arange(3).repeat(10)
    return DataBundle(
        name="toy",
        x_train=x,
        y_train=y,
        x_val=x[:6],
        y_val=y[:6],
        x_test=x,
        y_test=y,
        num_classes=3,
        class_names=["a", "b", "c"],
        mean=torch.zeros(1),
        std=torch.ones(1),
        student_idx=torch.arange(30),
        student_val_idx=torch.arange(6),
    )


def _train(ckpt, stop_at=None):
    d = _distiller(steps_per_epoch=4)
    data = d.transfer_set(_digits_like(), 8)
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return stop_at is not None and calls["n"] == stop_at

    recipe = TrainConfig(epochs=2, batch_size=8, lr=0.01)
    res = fit(
        d,
        data,
        recipe,
        stage="student",
        seed=0,
        train_idx=data.student_idx,
        val_idx=data.student_val_idx,
        checkpoint=ckpt,
        fingerprint="f",
        should_stop=stop,
    )
    return d, res


def test_the_student_loop_sees_no_real_image_and_resumes_exactly(tmp_path):
    d, full = _train(None)
    assert d.real_images_seen(_digits_like()) == 0
    assert d.samples_seen == 2 * 4 * 8 and d.generator_updates == 8
    assert math.isnan(full.best_val_acc)  # no validation rows: the last epoch is the result
    with pytest.raises(Interrupted):
        _train(tmp_path / "ck.pt", stop_at=6)  # mid-epoch 2: the generator state is saved too
    d2, resumed = _train(tmp_path / "ck.pt")
    assert resumed.resumed_from_epoch == 1
    for k, v in full.last_state.items():
        assert torch.allclose(v, resumed.last_state[k], atol=1e-6), k
    assert all(
        torch.allclose(a, b, atol=1e-6)
        for a, b in zip(d.generator.parameters(), d2.generator.parameters(), strict=True)
    )
