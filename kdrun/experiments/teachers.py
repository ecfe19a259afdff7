"""Where a job's teacher comes from: trained once through the store, a checkpoint file, or a
pretrained model (evaluated, or fine-tuned through the store)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdrun.errors import CheckpointError
from kdrun.experiments.keys import checkpoint_key, pretrained_key
from kdrun.experiments.reports import StageReport
from kdrun.experiments.specs import first_reason, model_label
from kdrun.models import count_params, is_pretrained
from kdrun.store import CorruptArtifact, content_key, load_weights


def make_teacher(ctx: Any) -> nn.Module:
    """The teacher of job ``ctx`` (a kdrun.experiments.context.JobContext)."""
    tcfg = ctx.cfg.teacher
    if tcfg.checkpoint:
        model = teacher_from_file(ctx, tcfg)
        untrained_report(ctx, tcfg, model, True, "checkpoint")
        # Keyed by content, so overwriting the file never reuses stale cached logits.
        ctx.teacher_keys.append(checkpoint_key(tcfg.checkpoint))
        return model
    if is_pretrained(tcfg):
        return pretrained_teacher(ctx)
    return ctx.model(tcfg, "teacher")


def untrained_report(
    ctx: Any, tcfg: DictConfig, model: nn.Module, from_cache: bool, source: str
) -> None:
    """The report of a teacher kdrun did not train: test numbers only."""
    headline = ctx.task.headline
    scores = {
        **ctx.test_metrics(model, ctx.view_data(tcfg)),
        ctx.task.selection.name: float("nan"),
        f"last_{headline}": float("nan"),
    }
    ctx.reports["teacher"] = StageReport(
        model_label(tcfg), count_params(model), scores, 0, 0.0, from_cache, source
    )


def teacher_from_file(ctx: Any, tcfg: DictConfig) -> nn.Module:
    model = ctx.build(tcfg)
    path = Path(tcfg.checkpoint).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"teacher.checkpoint={path} does not exist; give the path of a teacher.pt "
            f"from a kdrun run directory"
        )
    try:
        state = load_weights(path)
    except (CorruptArtifact, OSError, EOFError) as e:
        raise CheckpointError(
            f"teacher.checkpoint={path} cannot be loaded: {e}; give a teacher.pt from a "
            f"kdrun run directory (or a file saved with torch.save(model.state_dict()))"
        ) from None
    try:
        if not isinstance(state, dict):
            raise TypeError(f"it holds a {type(state).__name__}, not a state dict")
        model.load_state_dict(state)
    except Exception as e:
        raise CheckpointError(
            f"teacher.checkpoint={path} does not fit teacher={tcfg.name} on "
            f"{ctx.cfg.dataset.name} ({first_reason(e)}); check the teacher model and data set"
        ) from None
    return model


def pretrained_teacher(ctx: Any) -> nn.Module:
    """A pretrained teacher (``is_pretrained``: weights=, an hf or hf_causal_lm directory,
    or teacher.pretrained=true) is evaluated, never retrained: its test numbers on this
    data set's test split are reported with source 'pretrained' and 0 s of training, and
    caches derived from it are keyed by its weights' content. With
    ``teacher.finetune_epochs=N`` it is fine-tuned first, through the store."""
    tcfg = ctx.cfg.teacher
    if tcfg.finetune_epochs > 0:
        ft = OmegaConf.merge(tcfg, {"train": {"epochs": tcfg.finetune_epochs}})
        model = ctx.model(ft, "teacher")
        ctx.reports["teacher"].source = "finetuned"
        return model
    model = ctx.build(tcfg)
    untrained_report(ctx, tcfg, model, False, "pretrained")
    ctx.teacher_keys.append(f"pretrained:{content_key(pretrained_key(tcfg, model))}")
    return model
