"""``kdrun experiment=condense``: learn a synthetic training set, then measure what it is worth.

1. ``condense.ipc`` images per class are learned from the training split (``condense.method``:
   dm or dc), through the store: a rerun or a sweep over evaluation settings reuses them, and
   a killed run resumes from the checkpoint kept beside the artifact.
2. A fresh evaluation net (the ``student`` model) trains on them alone, and, with the same
   initial weights and recipe, on ``ipc`` random real images per class; each over
   ``condense.eval_seeds`` seeds (mean ± std). With ``condense.soft_labels`` also on the
   synthetic images labelled by the teacher's soft targets at T (the KD loss).
3. The same net on the full training split is the run's baseline (the usual stored stage).

Outputs in the run directory: synthetic.pt (loadable as ``dataset=synthetic
dataset.path=RUN_DIR/synthetic.pt``), synthetic.png, and metrics.json ``condense{...}``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from kdrun.condense import (
    CONDENSERS,
    CondenseConfig,
    SyntheticSet,
    class_rows,
    condense_images,
    parse_strategy,
    save_grid,
)
from kdrun.condense.anchors import anchors_for, condense_table
from kdrun.condense.evaluate import EvalSpec, random_real_subset, train_and_test
from kdrun.config import ModelConfig, to_container
from kdrun.engine import predict, resolve_device
from kdrun.errors import ConfigError
from kdrun.experiments.context import JobContext, job_threads
from kdrun.experiments.keys import condensed_key
from kdrun.experiments.kinds import register_kind
from kdrun.models import build_model, count_params
from kdrun.report.evidence import seeds_evidence
from kdrun.store import CorruptArtifact, atomic_torch_save, content_key

log = logging.getLogger("kdrun")

# Options that change the learned images (the rest only change how they are evaluated).
EVAL_ONLY = (
    "soft_labels",
    "eval_seeds",
    "eval_epochs",
    "eval_lr",
    "eval_batch",
    "eval_dsa",
    "full_data",
    "checkpoint_every",
)


def condense_options(cfg) -> CondenseConfig:
    """The typed ``condense`` group of the run's config."""
    merged = OmegaConf.merge(OmegaConf.structured(CondenseConfig), cfg.condense)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def check_options(cfg) -> None:
    """The ``condense`` group's impossible values, as one line each, before any work."""
    opts = condense_options(cfg)
    if opts.method not in CONDENSERS:
        raise ConfigError(
            f"unknown condense.method '{opts.method}'; choose one of: "
            f"{', '.join(sorted(CONDENSERS))}"
        )
    if opts.init not in ("real", "noise"):
        raise ConfigError(f"condense.init must be real or noise (got '{opts.init}')")
    for key in ("ipc", "iterations", "batch_real", "eval_seeds", "eval_epochs", "eval_batch"):
        if getattr(opts, key) < 1:
            raise ConfigError(f"condense.{key} must be >= 1 (got {getattr(opts, key)})")
    try:
        parse_strategy(opts.dsa_strategy)
    except ValueError as e:
        raise ConfigError(f"condense.dsa_strategy: {e}") from None


def check_class_counts(opts: CondenseConfig, y_train: torch.Tensor, num_classes: int) -> None:
    """With init=real, every class needs ``ipc`` real images (known once the data is loaded)."""
    counts = [len(r) for r in class_rows(y_train.cpu(), num_classes)]
    if opts.init == "real" and opts.ipc > min(counts):
        c = int(np.argmin(counts))
        raise ConfigError(
            f"condense.ipc={opts.ipc} but class {c} has only {counts[c]} training images to "
            f"initialise from; lower condense.ipc or use condense.init=noise"
        )


def _matching_net(p: JobContext, opts: CondenseConfig):
    spec = OmegaConf.structured(ModelConfig(name=opts.net, width=opts.net_width))
    shape, n_cls = p.data.in_shape, p.data.num_classes
    return lambda: build_model(spec, shape, n_cls)


def learn_images(p: JobContext, opts: CondenseConfig) -> tuple[dict[str, Any], bool]:
    """The synthetic images of this data set and options, from the store or learned now."""
    d = p.data
    spec = condensed_key(p.cfg, p.data_fp)
    n = d.num_classes * opts.ipc

    def build(workdir: Path):
        with p.reporter.stage("condense", opts.iterations) as hooks:
            step = hooks.get("on_step")

            def on_iteration(it: int, loss: float) -> None:
                if step is not None:
                    step()
                if it % 50 == 0 or it == opts.iterations:
                    log.info("condense iteration %d/%d: loss %.4f", it, opts.iterations, loss)

            res = condense_images(
                opts,
                _matching_net(p, opts),
                d.x_train,
                d.y_train,
                d.num_classes,
                seed=p.cfg.seed,
                checkpoint=workdir / "partial.pt",
                fingerprint=content_key(spec),
                should_stop=p.should_stop,
                on_iteration=on_iteration,
            )
        (workdir / "partial.pt").unlink(missing_ok=True)
        payload = {
            "images": res.images.cpu(),
            "labels": res.labels.cpu(),
            "losses": torch.tensor(res.losses),
        }
        return payload, {"seconds": res.seconds, "resumed_from": res.resumed_from}

    def check(t: Any) -> None:
        if not isinstance(t, dict) or tuple(t["images"].shape) != (n, *d.in_shape):
            raise CorruptArtifact("synthetic images do not fit this data set and ipc")

    art = p.cached("synthetic", spec, build, check=check)
    return {**art.payload, **art.meta}, art.from_cache


def _eval_net(p: JobContext, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(p.cfg.student, p.data.in_shape, p.data.num_classes).to(p.device)


def _mean_std(accs: list[float]) -> tuple[float, float]:
    # population std over seeds, as the reference code reports (np.std)
    return float(np.mean(accs)), float(np.std(accs))


def evaluate_sets(p: JobContext, opts: CondenseConfig, syn: SyntheticSet) -> dict[str, Any]:
    """Evaluation nets on the synthetic set, on random real subsets [and with soft labels]."""
    cfg, d = p.cfg, p.data
    ops = parse_strategy(opts.dsa_strategy) if opts.eval_dsa else []
    spec = EvalSpec(
        opts.eval_epochs,
        opts.eval_lr,
        opts.eval_batch,
        ops,
        cfg.T,
        cfg.alpha,
        cfg.runtime.eval_batch_size,
    )
    seeds = [cfg.seed * 1000 + s for s in range(opts.eval_seeds)]
    images, labels = syn.images.to(p.device), syn.labels.to(p.device)
    out: dict[str, list[float]] = {"synthetic": [], "random_real": [], "synthetic_soft": []}
    for s in seeds:  # the same initial weights for each set: a paired comparison
        out["synthetic"].append(train_and_test(_eval_net(p, s), images, labels, d, spec, s))
        xr, yr = random_real_subset(d, opts.ipc, s)
        out["random_real"].append(train_and_test(_eval_net(p, s), xr, yr, d, spec, s))
        if syn.soft_logits is not None:
            soft = syn.soft_logits.to(p.device)
            out["synthetic_soft"].append(
                train_and_test(_eval_net(p, s), images, labels, d, spec, s, soft_logits=soft)
            )
        log.info(
            "condense eval seed %d: synthetic %.4f, random real %.4f",
            s,
            out["synthetic"][-1],
            out["random_real"][-1],
        )
    return {"seeds": seeds, **{k: v for k, v in out.items() if v}}


def run_condense(p: JobContext) -> dict[str, Any]:
    """Everything ``experiment=condense`` computes; returns the job's metrics."""
    cfg, d = p.cfg, p.data
    opts = condense_options(cfg)
    check_class_counts(opts, d.y_train, d.num_classes)
    learned, from_store = learn_images(p, opts)
    syn = SyntheticSet(
        learned["images"],
        learned["labels"],
        d.mean.cpu(),
        d.std.cpu(),
        dataset=d.name,
        class_names=list(d.class_names),
    )
    teacher = p.teacher() if opts.soft_labels else None
    if teacher is not None:  # the teacher's logits; T is applied by the KD loss
        syn.soft_logits = predict(teacher, syn.images.to(p.device)).cpu()
        syn.T = float(cfg.T)
    atomic_torch_save(syn.to_payload(), p.run_dir / "synthetic.pt")
    save_grid(syn, p.run_dir / "synthetic.png", f"{d.name} · {opts.method} · ipc={opts.ipc}")
    accs = evaluate_sets(p, opts, syn)
    baseline = p.baseline() if opts.full_data else None
    return _metrics(p, opts, syn, learned, from_store, accs, teacher, baseline)


@register_kind("condense", check=check_options)
def run_condense_job(cfg, run_dir: Path, reporter, should_stop=None) -> dict[str, Any]:
    """The ``condense`` kind: kdrun.experiments.run_job calls it for ``kind=condense``."""
    device = resolve_device(cfg.device)
    p = JobContext(cfg, run_dir, device, reporter, job_threads(cfg, device))
    if should_stop is not None:
        p.should_stop = should_stop
    m = run_condense(p)
    reporter.console.print(condense_table({"dataset": cfg.dataset.name, "T": cfg.T, **m}))
    return m


def _rows(p: JobContext, c: dict[str, Any], seconds: float) -> dict[str, dict[str, Any]]:
    """The evaluation net's results as rows of the run table (mean over seeds)."""
    name = p.cfg.student.name
    params = count_params(_eval_net(p, 0))
    row = {"model": name, "params": params, "train_seconds": seconds, "from_cache": False}
    rows = {f"synthetic ({c['method']})": {**row, "test_acc": c["synthetic_acc"]}}
    if c.get("synthetic_soft_acc") is not None:
        rows["synthetic + soft labels"] = {**row, "test_acc": c["synthetic_soft_acc"]}
    rows["random real"] = {**row, "test_acc": c["random_real_acc"], "train_seconds": 0.0}
    return rows


def _metrics(
    p: JobContext, opts, syn, learned, from_store, accs, teacher, baseline
) -> dict[str, Any]:
    d = p.data
    c: dict[str, Any] = {"method": opts.method, "ipc": opts.ipc}
    c["synthetic_acc"], c["synthetic_acc_std"] = _mean_std(accs["synthetic"])
    c["random_real_acc"], c["random_real_acc_std"] = _mean_std(accs["random_real"])
    if "synthetic_soft" in accs:
        c["synthetic_soft_acc"], c["synthetic_soft_acc_std"] = _mean_std(accs["synthetic_soft"])
    # the two sets' nets share initial weights seed by seed: a paired comparison
    c["evidence"] = seeds_evidence(accs["random_real"], accs["synthetic"])
    c["full_data_acc"] = p.reports["baseline"].test_acc if baseline is not None else None
    c.update(
        steps=opts.iterations,
        seconds=learned["seconds"],
        from_store=from_store,
        resumed_from=learned.get("resumed_from", 0),
        dsa=opts.dsa,
        init=opts.init,
        eval_model=p.cfg.student.name,
        eval_seeds=opts.eval_seeds,
        per_seed=accs,
        num_classes=d.num_classes,
        train_size=len(d.y_train),
        published=anchors_for(d.name, opts.ipc),
        options=to_container(OmegaConf.structured(opts)),
        synthetic_path=str(p.run_dir / "synthetic.pt"),
    )
    history = [
        {"stage": "condense", "epoch": i + 1, "loss": float(v)}
        for i, v in enumerate(learned["losses"].tolist())
    ]
    return {
        "teacher": p.reports["teacher"].as_dict() if teacher is not None else None,
        "baseline": p.reports["baseline"].as_dict() if baseline is not None else None,
        "student": None,
        "kd_gain": None,
        "condense": c,
        "extra_models": _rows(p, c, learned["seconds"]),
        "stage_labels": {"baseline": "full training split"},
        "from_store": p.from_store,
        "data": {
            "train_size": len(d.y_train),
            "val_size": len(d.y_val),
            "test_size": len(d.y_test),
            "num_classes": d.num_classes,
        },
        "_history": history + p.history,
    }
