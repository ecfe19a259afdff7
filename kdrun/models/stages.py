"""Find the feature stages of a model kdrun did not build, by probing one forward pass.

Feature methods read ``model.kd_stages`` (module names whose outputs are stage features) and
``model.kd_head`` (the final classifier, whose input is the embedding). kdrun's own models
name them; for a torchvision/timm/Hugging Face/custom network they are found here:

- a stage is the last module (in completion order) whose output has a given spatial
  resolution: the end of each resolution group, as attention transfer (Zagoruyko & Komodakis
  2017, sec. 3.1) and FitNets pair them;
- the head is the last ``nn.Linear`` whose output is the model's output (the logits).

A transformer (its blocks output (N, tokens, dim) after the patch embedding, e.g. a ViT) has
no spatial stages: ``kd_stages`` is empty and ``kd_kind`` is ``"tokens"``, so a method that
needs feature maps can refuse it in one line. Layers can still be named by module path
(``method.teacher_layer=encoder.layers.encoder_layer_5``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdrun.errors import ConfigError, one_line


def _first_tensor(out: object) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)  # Hugging Face ModelOutput
    return logits if isinstance(logits, torch.Tensor) else None


@torch.no_grad()
def trace_outputs(
    model: nn.Module, in_shape: Sequence[int]
) -> tuple[list[tuple[str, tuple[int, ...]]], torch.Tensor]:
    """One 2-sample forward in eval mode: (module name, output shape) in completion order,
    and the model's output."""
    done: list[tuple[str, tuple[int, ...]]] = []
    handles = []

    def hook(name: str):
        def fn(_mod: nn.Module, _args: tuple, out: object) -> None:
            t = _first_tensor(out)
            if t is not None:
                done.append((name, tuple(t.shape)))

        return fn

    for name, mod in model.named_modules():
        # A global pooling's (N, C, 1, 1) output is the embedding, not a stage.
        if name and "Pool" not in type(mod).__name__:
            handles.append(mod.register_forward_hook(hook(name)))
    p = next(model.parameters(), None)
    x = torch.zeros(2, *in_shape, device=p.device if p is not None else "cpu")
    was_training = model.training
    model.eval()
    try:
        out = _first_tensor(model(x))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if out is None:
        raise ConfigError(f"{type(model).__name__} does not return a logits tensor")
    return done, out


def find_stages(done: list[tuple[str, tuple[int, ...]]]) -> tuple[list[str], str]:
    """The last module of each spatial resolution, in forward order, and the model kind."""
    last_4d = max((i for i, (_, s) in enumerate(done) if len(s) == 4), default=-1)
    if last_4d < 0:
        return [], "flat"
    if any(len(s) == 3 for _, s in done[last_4d + 1 :]):
        return [], "tokens"  # conv patch embedding followed by token blocks: a transformer
    last: dict[tuple[int, ...], int] = {}
    for i, (_, s) in enumerate(done):
        if len(s) == 4:
            last.pop(s[-2:], None)  # re-insert: dict order = order of each group's last module
            last[s[-2:]] = i
    return [done[i][0] for i in last.values()], "spatial"


def find_head(model: nn.Module, done: list, out: torch.Tensor) -> str | None:
    """The last nn.Linear (completion order) whose output shape is the logits' shape."""
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    heads = [n for n, s in done if n in linears and s == tuple(out.shape)]
    return heads[-1] if heads else None


def annotate(model: nn.Module, in_shape: Sequence[int], what: str) -> nn.Module:
    """Set ``kd_stages``, ``kd_head`` and ``kd_kind`` on ``model`` (unless it names its own)."""
    try:
        done, out = trace_outputs(model, in_shape)
    except ConfigError:
        raise
    except Exception as e:  # a fixed-size model (e.g. a ViT) fed another size
        raise ConfigError(
            f"{what} cannot take {tuple(in_shape)} inputs ({one_line(e, 160)}); set "
            f"dataset.image_size to the size it expects"
        ) from None
    if hasattr(model, "kd_stages") and hasattr(model, "kd_head"):
        return model
    stages, kind = find_stages(done)
    model.kd_stages = stages
    model.kd_head = find_head(model, done, out)
    model.kd_kind = kind
    return model
