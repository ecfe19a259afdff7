"""Model registry. Every builder takes (model config, input shape, class count).

Each model records two names that feature-based methods read through forward hooks, so no
model is rewritten for distillation:
  - ``kd_stages``: module names whose outputs are the intermediate stage features;
  - ``kd_head``: the name of the final linear classifier (its input is the embedding).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

ModelBuilder = Callable[..., nn.Module]
MODELS: dict[str, ModelBuilder] = {}
# What each model reads: "images" (C, H, W tensors) or "tokens" (token-id windows); absent for
# models that take either (custom modules, plugins that do not say), which are not checked.
MODEL_INPUTS: dict[str, str] = {}
# A model's own config fields (a dataclass), given as <role>.options.KEY and checked against
# it like the schema's (kdrun.config.options); absent: the model takes no options.
MODEL_OPTIONS: dict[str, type] = {}


def register_model(
    name: str, inputs: str | None = None, options: type | None = None
) -> Callable[[ModelBuilder], ModelBuilder]:
    def deco(fn: ModelBuilder) -> ModelBuilder:
        MODELS[name] = fn
        if inputs is not None:
            MODEL_INPUTS[name] = inputs
        if options is not None:
            MODEL_OPTIONS[name] = options
        return fn

    return deco


def build_model(cfg, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    model = MODELS[cfg.name](cfg, tuple(in_shape), num_classes)
    assert hasattr(model, "kd_stages") and hasattr(model, "kd_head"), cfg.name
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
