"""Feature methods on models from outside kdrun: layers named by module path work, and a
method that cannot apply (attention transfer on a ViT) is refused in one line before training."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from kdrun.config import config_dir, register_configs
from kdrun.errors import ConfigError
from kdrun.experiments import validate

register_configs()

VIT = (
    "teacher=custom",
    "teacher._target_=torchvision.models.VisionTransformer",
    "+teacher.image_size=32",
    "+teacher.patch_size=8",
    "+teacher.num_layers=1",
    "+teacher.num_heads=2",
    "+teacher.hidden_dim=8",
    "+teacher.mlp_dim=16",
)


def cfg(*overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_layer_named_by_module_path_on_a_torchvision_teacher():
    validate(
        cfg(
            "teacher=torchvision",
            "teacher.arch=resnet18",
            "method=fitnet",
            "method.teacher_layer=layer3",
            "student=cnn",
        )
    )
    with pytest.raises(ConfigError) as e:
        validate(
            cfg(
                "teacher=torchvision",
                "teacher.arch=resnet18",
                "method=fitnet",
                "method.teacher_layer=layer9",
                "student=cnn",
            )
        )
    assert "layer9" in str(e.value) and "\n" not in str(e.value)


def test_attention_transfer_on_a_vit_is_refused_in_one_line():
    with pytest.raises(ConfigError) as e:
        validate(cfg(*VIT, "method=at", "student=cnn"))
    msg = str(e.value)
    assert "transformer" in msg and "use kd" in msg and "\n" not in msg
    validate(cfg(*VIT, "method=rkd", "student=cnn"))  # relation methods need no feature maps
