"""Models: the registry, the built-in families, and forward hooks for feature methods.

Importing this package registers every built-in model (basic, the CIFAR families, the
causal language models).
"""

from kdrun.models import basic, cifar, convnet, external, gpt, kg  # noqa: F401  (registration)
from kdrun.models.basic import MLP, SmallCNN
from kdrun.models.external import (
    Preprocessing,
    is_pretrained,
    load_state_file,
    preprocessing,
    require,
    weights_identity,
    with_weights,
)
from kdrun.models.registry import (
    MODEL_INPUTS,
    MODEL_OPTIONS,
    MODELS,
    build_model,
    count_params,
    register_model,
)

__all__ = [
    "MODEL_OPTIONS",
    "MLP",
    "MODELS",
    "Preprocessing",
    "SmallCNN",
    "build_model",
    "count_params",
    "is_pretrained",
    "load_state_file",
    "preprocessing",
    "register_model",
    "MODEL_INPUTS",
    "require",
    "weights_identity",
    "with_weights",
]
