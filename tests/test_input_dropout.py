"""MLP input dropout (``teacher.input_dropout``): Hinton et al.'s MNIST nets dropped 20% of the
input pixels as well as half the hidden units. Off, the model and its store keys are the ones
that existed before the field."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from kdrun.config.schema import ModelConfig
from kdrun.errors import ConfigError
from kdrun.experiments import validate
from kdrun.experiments.keys import model_section
from kdrun.models import MLP
from kdrun.models.registry import build_model
from tests.test_config import compose_cfg


def _pair(p: float) -> tuple[MLP, MLP]:
    torch.manual_seed(0)
    plain = MLP(6, [5], 3, dropout=0.0)
    dropped = MLP(6, [5], 3, dropout=0.0, input_dropout=p)
    dropped.load_state_dict(plain.state_dict())  # the same parameter names: nothing added
    return plain, dropped


def test_training_drops_input_pixels_with_inverted_scaling():
    plain, dropped = _pair(0.5)
    x = torch.rand(64, 6) + 0.5  # no zero pixels: a dropped one is visible
    torch.manual_seed(1)
    got = dropped.train()(x)
    torch.manual_seed(1)
    mask = torch.nn.functional.dropout(torch.ones_like(x), 0.5, training=True)
    assert set(mask.unique().tolist()) == {0.0, 2.0}  # kept pixels scaled by 1 / (1 - p)
    torch.testing.assert_close(got, plain(x * mask))
    assert not torch.allclose(got, plain(x))


def test_evaluation_and_zero_leave_the_model_unchanged():
    plain, dropped = _pair(0.5)
    x = torch.rand(8, 6)
    torch.testing.assert_close(dropped.eval()(x), plain.eval()(x))
    _, off = _pair(0.0)
    torch.testing.assert_close(off.train()(x), plain.train()(x))
    assert isinstance(off.input_drop, torch.nn.Identity)


def test_off_keeps_the_key_of_a_model_stored_before_the_field():
    cfg = OmegaConf.structured(ModelConfig(name="mlp"))
    section = model_section(cfg)
    assert "input_dropout" not in section
    before = OmegaConf.to_container(cfg)
    del before["input_dropout"]  # a config written before the field existed
    assert model_section(OmegaConf.create(before)) == section
    cfg.input_dropout = 0.2
    assert model_section(cfg)["input_dropout"] == 0.2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("teacher=cnn", "teacher.input_dropout=0.2"), "teacher.input_dropout applies to the mlp"),
        (("teacher=mlp", "teacher.input_dropout=1.0"), "teacher.input_dropout must be in [0, 1)"),
    ],
)
def test_bad_values_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")) as e:
        validate(compose_cfg(*overrides))
    assert "\n" not in str(e.value)


def test_the_config_field_reaches_the_built_teacher_only():
    cfg = compose_cfg("teacher=mlp", "student=mlp", "teacher.input_dropout=0.2")
    validate(cfg)
    teacher = build_model(cfg.teacher, (1, 8, 8), 10)
    student = build_model(cfg.student, (1, 8, 8), 10)
    assert isinstance(teacher.input_drop, torch.nn.Dropout) and teacher.input_drop.p == 0.2
    assert isinstance(student.input_drop, torch.nn.Identity)
