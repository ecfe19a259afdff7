"""Read intermediate features of any registered model through forward hooks, by module name.

Feature-based methods never rewrite a model: they name the modules whose outputs they need
(``model.kd_stages`` lists the stage outputs, ``model.kd_head`` is the final classifier, whose
*input* is the embedding) and capture them for the duration of one forward pass.

    with capture(model, ["stages.1"], embedding=True) as taps:
        logits = model(x)
    taps.stages["stages.1"], taps.embedding

A stage spec in a config is a module name (``stages.1``), an index into ``kd_stages`` (``-1``
= the last stage) or ``mid`` (the middle stage, ``kd_stages[len // 2]``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from kdrun.errors import ConfigError


@dataclass
class Taps:
    """What one forward pass left behind: stage outputs by module name, and the embedding."""

    stages: dict[str, torch.Tensor] = field(default_factory=dict)
    embedding: torch.Tensor | None = None


def _module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        stages = ", ".join(getattr(model, "kd_stages", []))
        raise ConfigError(
            f"{type(model).__name__} has no module '{name}'; its stages are: {stages}"
        ) from None


@contextmanager
def capture(
    model: nn.Module, stages: Sequence[str] = (), embedding: bool = False
) -> Iterator[Taps]:
    """Hook ``stages`` (module names) and, if asked, the input of ``model.kd_head``.

    The hooks live only inside the ``with`` block. A module called twice in one forward
    keeps its last output. Captured tensors are the graph's own (gradients flow through).
    """
    taps = Taps()
    handles = []

    def keep(name: str):
        def hook(_mod, _inp, out):
            taps.stages[name] = out

        return hook

    def keep_embedding(_mod, args):
        taps.embedding = args[0]

    try:
        for name in stages:
            handles.append(_module(model, name).register_forward_hook(keep(name)))
        if embedding:
            head = _module(model, model.kd_head)
            handles.append(head.register_forward_pre_hook(keep_embedding))
        yield taps
    finally:
        for h in handles:
            h.remove()


_INDEX = re.compile(r"^-?\d+$")


def resolve_stage(model: nn.Module, spec: str | int, what: str = "layer") -> str:
    """A stage spec (module name, index into ``kd_stages``, or ``mid``) -> a module name."""
    stages = list(getattr(model, "kd_stages", []))
    spec = str(spec)
    if spec == "mid":
        if not stages:
            raise ConfigError(f"{what}=mid: {type(model).__name__} lists no kd_stages")
        return stages[len(stages) // 2]
    if _INDEX.match(spec):
        i = int(spec)
        if not -len(stages) <= i < len(stages):
            raise ConfigError(
                f"{what}={spec} is out of range: the model has {len(stages)} stages "
                f"({', '.join(stages)}); use an index in [-{len(stages)}, {len(stages) - 1}]"
            )
        return stages[i]
    try:
        model.get_submodule(spec)
    except AttributeError:
        raise ConfigError(
            f"{what}='{spec}' is not a module of {type(model).__name__}; use a stage index, "
            f"'mid', or one of its stages: {', '.join(stages)}"
        ) from None
    return spec


@torch.no_grad()
def probe(
    model: nn.Module, in_shape: Sequence[int], stages: Sequence[str] = (), embedding: bool = False
) -> Taps:
    """Run a 2-sample dummy batch in eval mode (no BN statistics change) to learn shapes."""
    try:
        p = next(model.parameters())
        device, dtype = p.device, p.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    was_training = model.training
    model.eval()
    try:
        with capture(model, stages, embedding) as taps:
            model(torch.zeros(2, *in_shape, device=device, dtype=dtype))
    finally:
        model.train(was_training)
    return taps


def feature_dim(t: torch.Tensor) -> int:
    """Number of features per sample of a captured (N, ...) tensor."""
    return int(t[0].numel())
