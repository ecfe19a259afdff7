"""Analyses that run after a job's training: the classic demonstrations of Hinton et al. (2015).

Each analysis declares when it applies (from the config) and returns one metrics object while
writing its figures into the run directory:

- ``omitted``: the transfer set lacks some classes (``dataset.omit_classes``, or all classes
  outside ``dataset.keep_classes``). Accuracy on them before and after adding a bias to their
  logits, chosen without any of their labels, against the from-scratch student.
- ``small_data``: students see a subset (``dataset.train_fraction`` < 1 or ``keep_classes``).
  Scratch and distilled student on the subset next to the scratch student on all data.
- ``soft_targets``: the teacher's (and student's) soft targets vs temperature.

Only test-set *reporting* uses test labels; every choice (the bias) uses unlabelled
validation inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from kdrun.commands.soft_targets import dark_knowledge
from kdrun.engine import predict
from kdrun.engine.distributed import current
from kdrun.experiments.context import JobContext
from kdrun.methods.base import transfer_rows
from kdrun.report.evidence import wilson


@dataclass
class Context:
    job: JobContext  # the job's data, models, reports and reporter
    teacher: nn.Module
    student: nn.Module  # best (validation-selected) weights loaded
    baseline: nn.Module | None
    metrics: dict[str, Any]  # what the job reports so far (earlier analyses included)

    @property
    def cfg(self) -> DictConfig:
        return self.job.cfg

    @property
    def run_dir(self) -> Path:
        return Path(self.job.run_dir)

    def logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return predict(model, x, self.cfg.runtime.eval_batch_size, self.cfg.runtime.amp).cpu()


@dataclass
class Analysis:
    applies: Callable[[DictConfig], bool]
    run: Callable[[Context], dict[str, Any]]
    needs_teacher: bool = True  # skipped for teacher-less methods (e.g. dml)
    tasks: tuple[str, ...] = ("classify",)  # the kdrun.tasks whose data it reads (classes)


ANALYSES: dict[str, Analysis] = {}


def register_analysis(name: str, applies: Callable[[DictConfig], bool], needs_teacher: bool = True):
    def deco(fn: Callable[[Context], dict[str, Any]]) -> Callable[[Context], dict[str, Any]]:
        ANALYSES[name] = Analysis(applies, fn, needs_teacher)
        return fn

    return deco


def run_analyses(
    p: JobContext, teacher, student, baseline, metrics: dict[str, Any]
) -> dict[str, Any]:
    """Run every analysis that applies to this job, in registration order."""
    out: dict[str, Any] = {}
    for name, a in ANALYSES.items():
        applies = a.applies(p.cfg) and p.task.name in a.tasks
        if applies and (teacher is not None or not a.needs_teacher):
            out[name] = a.run(Context(p, teacher, student, baseline, {**metrics, **out}))
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------- omitted classes


def unseen_classes(ds_cfg, num_classes: int) -> list[int]:
    """Classes with no example in the student's transfer set."""
    if ds_cfg.omit_classes:
        return sorted({int(c) for c in ds_cfg.omit_classes})
    if ds_cfg.keep_classes:
        keep = {int(c) for c in ds_cfg.keep_classes}
        return [c for c in range(num_classes) if c not in keep]
    return []


def _mask(classes: list[int], num_classes: int) -> torch.Tensor:
    m = torch.zeros(num_classes, dtype=torch.bool)
    m[classes] = True
    return m


def adjust(logits: torch.Tensor, classes: list[int], bias: float) -> torch.Tensor:
    """Add ``bias`` to the logits of ``classes`` (= lowering all other classes' biases)."""
    return logits + bias * _mask(classes, logits.shape[1]).to(logits.dtype)


def predicted_fraction(logits: torch.Tensor, classes: list[int]) -> float:
    if len(logits) == 0:
        return float("nan")
    return float(_mask(classes, logits.shape[1])[logits.argmax(1)].float().mean())


def bias_to_match(logits: torch.Tensor, classes: list[int], target: float) -> float:
    """The bias b for ``classes`` whose predicted frequency on these inputs is ``target``.

    An input is predicted as one of ``classes`` exactly when b exceeds its margin
    max(other logits) - max(logits of classes), so the answer is a quantile of the margins
    (midway between two neighbouring margins, for stability)."""
    m = _mask(classes, logits.shape[1])
    margin = (logits[:, ~m].max(1).values - logits[:, m].max(1).values).sort().values.double()
    n = len(margin)
    k = int(round(target * n))
    if k <= 0:
        return float(margin[0]) - 1.0
    if k >= n:
        return float(margin[-1]) + 1.0
    return float((margin[k - 1] + margin[k]) / 2)


def auto_bias(
    student_val: torch.Tensor, teacher_val: torch.Tensor, classes: list[int], prior: str
) -> tuple[float, float]:
    """(bias, target frequency), from validation *inputs* only (their labels are not read)."""
    target = (
        len(classes) / teacher_val.shape[1]
        if prior == "uniform"
        else predicted_fraction(teacher_val, classes)
    )
    return bias_to_match(student_val, classes, target), target


def _acc(logits: torch.Tensor, y: torch.Tensor, sel: torch.Tensor | None = None) -> float:
    if sel is not None:
        logits, y = logits[sel], y[sel]
    return float((logits.argmax(1) == y).float().mean()) if len(y) else float("nan")


def _errors(logits: torch.Tensor, y: torch.Tensor, sel: torch.Tensor | None = None) -> int:
    if sel is not None:
        logits, y = logits[sel], y[sel]
    return int((logits.argmax(1) != y).sum())


def bias_grid(*anchors: float) -> np.ndarray:
    lo = min(0.0, *anchors) - 2.0
    hi = max(8.0, *(1.5 * a for a in anchors), *(a + 4 for a in anchors))
    return np.round(np.linspace(lo, hi, 81), 4)


def _restricted(cfg: DictConfig) -> bool:
    return bool(cfg.dataset.omit_classes or cfg.dataset.keep_classes)


@dataclass
class _Unseen:
    """What every part of the omitted-class analysis shares: the unseen classes, the test
    labels, which test images are of those classes, and how the bias is chosen."""

    classes: list[int]
    y: torch.Tensor
    sel: torch.Tensor
    t_val: torch.Tensor  # the teacher's validation logits: the label-free bias target
    prior: str
    manual: float | None

    def bias(self, val_logits: torch.Tensor) -> float:
        if self.manual is not None:
            return float(self.manual)
        return auto_bias(val_logits, self.t_val, self.classes, self.prior)[0]

    def curve(self, logits: torch.Tensor, grid: np.ndarray) -> tuple[list, list]:
        """Test accuracy, overall and on the unseen classes, at each bias of ``grid``."""
        adjusted = [adjust(logits, self.classes, b) for b in grid]
        return [_acc(a, self.y) for a in adjusted], [_acc(a, self.y, self.sel) for a in adjusted]


def _omitted_student(u: _Unseen, s_val, s_test, t_test, auto, target, bias) -> dict[str, Any]:
    s_adj, y, sel, classes = adjust(s_test, u.classes, bias), u.y, u.sel, u.classes
    return {
        "bias": bias,
        "bias_source": "manual" if u.manual is not None else f"auto ({u.prior} prior)",
        "auto_bias": auto,
        "target_frequency": target,
        "val_predicted_frequency": predicted_fraction(s_val, classes),
        "val_predicted_frequency_adjusted": predicted_fraction(
            adjust(s_val, classes, bias), classes
        ),
        "test_count_omitted": int(sel.sum()),
        "test_count": len(y),
        "teacher_acc_on_omitted": _acc(t_test, y, sel),
        "student_test_acc": _acc(s_test, y),
        "student_acc_on_omitted": _acc(s_test, y, sel),
        "student_test_errors": _errors(s_test, y),
        "student_errors_on_omitted": _errors(s_test, y, sel),
        "student_test_acc_adjusted": _acc(s_adj, y),
        "student_acc_on_omitted_adjusted": _acc(s_adj, y, sel),
        "student_test_errors_adjusted": _errors(s_adj, y),
        "student_errors_on_omitted_adjusted": _errors(s_adj, y, sel),
        "baseline_test_acc": None,
        "baseline_acc_on_omitted": None,
    }


def _omitted_baseline(u: _Unseen, b_val, b_test) -> dict[str, Any]:
    b_bias, y, sel = u.bias(b_val), u.y, u.sel
    b_adj = adjust(b_test, u.classes, b_bias)
    return dict(
        baseline_test_acc=_acc(b_test, y),
        baseline_acc_on_omitted=_acc(b_test, y, sel),
        baseline_test_errors=_errors(b_test, y),
        baseline_errors_on_omitted=_errors(b_test, y, sel),
        baseline_bias=b_bias,
        baseline_test_acc_adjusted=_acc(b_adj, y),
        baseline_acc_on_omitted_adjusted=_acc(b_adj, y, sel),
    )


def _omitted_last(u: _Unseen, l_val, l_test, same: bool) -> dict[str, Any]:
    l_bias, y, sel = u.bias(l_val), u.y, u.sel
    l_adj = adjust(l_test, u.classes, l_bias)
    return {
        "same_as_selected": same,
        "bias": l_bias,
        "student_test_acc": _acc(l_test, y),
        "student_acc_on_omitted": _acc(l_test, y, sel),
        "student_test_acc_adjusted": _acc(l_adj, y),
        "student_acc_on_omitted_adjusted": _acc(l_adj, y, sel),
    }


@register_analysis("omitted", _restricted)
def omitted(ctx: Context) -> dict[str, Any]:
    cfg, d = ctx.cfg, ctx.job.data
    classes = unseen_classes(cfg.dataset, d.num_classes)
    y = d.y_test.cpu()
    sel = torch.from_numpy(np.isin(y.numpy(), classes))
    # Validation inputs only, all classes, labels unused: the bias is chosen label-free.
    s_val, t_val = ctx.logits(ctx.student, d.x_val), ctx.logits(ctx.teacher, d.x_val)
    s_test, t_test = ctx.logits(ctx.student, d.x_test), ctx.logits(ctx.teacher, d.x_test)
    u = _Unseen(classes, y, sel, t_val, cfg.analysis.bias_prior, cfg.analysis.bias)
    auto, target = auto_bias(s_val, t_val, classes, u.prior)
    bias = u.bias(s_val) if u.manual is not None else auto
    out: dict[str, Any] = {"classes": classes, "class_names": [d.class_names[c] for c in classes]}
    out.update(_omitted_student(u, s_val, s_test, t_test, auto, target, bias))
    grid = bias_grid(bias, auto)
    s_acc, s_unseen = u.curve(s_test, grid)
    curve = {"bias": grid.tolist(), "student_test_acc": s_acc, "student_acc_on_omitted": s_unseen}
    best = int(np.argmax(curve["student_test_acc"]))
    # Reference only: this one is chosen with test labels, so it is an upper bound, not a result.
    out["oracle_bias"], out["oracle_test_acc"] = float(grid[best]), curve["student_test_acc"][best]
    if ctx.baseline is not None:
        b_val, b_test = ctx.logits(ctx.baseline, d.x_val), ctx.logits(ctx.baseline, d.x_test)
        out.update(_omitted_baseline(u, b_val, b_test))
        curve["baseline_test_acc"], curve["baseline_acc_on_omitted"] = u.curve(b_test, grid)
    out["curve"] = curve
    last = _last_student(ctx)
    if last is not None:  # validation without the unseen classes saturates early: show both
        l_val, l_test = ctx.logits(last, d.x_val), ctx.logits(last, d.x_test)
        curve["last_epoch_test_acc"], curve["last_epoch_acc_on_omitted"] = u.curve(l_test, grid)
        same = ctx.metrics["student"]["best_epoch"] == cfg.student.train.epochs
        out["last_epoch"] = _omitted_last(u, l_val, l_test, same)
    out["intervals"] = omitted_intervals(out)
    _plot_bias(out, d.name, ctx.run_dir / "omitted_bias.png")
    out["figures"] = ["omitted_bias.png"]
    _print_omitted(ctx, out)
    return out


def omitted_intervals(o: dict[str, Any]) -> dict[str, list[float]]:
    """95% Wilson intervals of the accuracies on the unseen classes' test images, which are
    few (37 test 3s on digits): each ``*_acc_on_omitted*`` key, the same key here."""
    n = o["test_count_omitted"]
    out = {}
    for key, acc in o.items():
        if "_acc_on_omitted" in key and isinstance(acc, float) and math.isfinite(acc):
            out[key] = list(wilson(round(acc * n), n))
    return out


def _last_student(ctx: Context) -> nn.Module | None:
    """The distilled student's last-epoch weights (saved by the pipeline), if present."""
    path = ctx.run_dir / "checkpoints" / "student_last.pt"
    if not path.is_file():
        return None
    import copy

    model = copy.deepcopy(ctx.student)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


def _plot_bias(o: dict[str, Any], dataset: str, path: Path) -> None:
    if not current().is_main:  # rank 0 draws for all ranks
        return
    plt = _plt()
    c = o["curve"]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    names = ", ".join(o["class_names"])
    label_om = names if len(o["classes"]) <= 3 else f"{len(o['classes'])} unseen classes"
    ax.plot(c["bias"], c["student_acc_on_omitted"], c="C0", label=f"distilled: acc on {label_om}")
    ax.plot(c["bias"], c["student_test_acc"], c="C1", label="distilled: overall acc")
    if "baseline_test_acc" in c:
        ax.plot(
            c["bias"],
            c["baseline_acc_on_omitted"],
            c="C0",
            ls=":",
            label=f"scratch: acc on {label_om}",
        )
        ax.plot(c["bias"], c["baseline_test_acc"], c="C1", ls=":", label="scratch: overall acc")
    if "last_epoch_test_acc" in c and not o["last_epoch"].get("same_as_selected"):
        ax.plot(
            c["bias"],
            c["last_epoch_acc_on_omitted"],
            c="C2",
            label=f"distilled, last epoch: acc on {label_om}",
        )
        ax.plot(c["bias"], c["last_epoch_test_acc"], c="C3", label="distilled, last epoch: overall")
        b_last = o["last_epoch"]["bias"]
        ax.axvline(b_last, c="C2", ls=":", lw=1, label=f"chosen bias, last epoch {b_last:.2f}")
    ax.axvline(o["bias"], c="gray", ls="--", lw=1, label=f"chosen bias {o['bias']:.2f}")
    ax.set_xlabel(f"bias added to the logit(s) of {label_om}")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(f"{dataset}: classes never seen by the student ({names})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def _print_omitted(ctx: Context, o: dict[str, Any]) -> None:
    from rich.table import Table

    n = o["test_count_omitted"]

    def unseen(key: str, src: dict[str, Any] = o) -> str:
        """An accuracy on the unseen classes with its 95% Wilson interval."""
        acc = src.get(key)
        if acc is None or not math.isfinite(acc):
            return "-"
        lo, hi = wilson(round(acc * n), n)
        return f"{_pct(acc)} [{100 * lo:.1f}, {100 * hi:.1f}]"

    t = Table(
        title=f"classes never seen by the student: {', '.join(o['class_names'])} "
        f"(bias {o['bias']:.2f}, {o['bias_source']})",
        title_style="bold",
    )
    cols = ("test acc", f"acc on unseen ({n}, 95% CI)", "adjusted test acc", "adjusted acc unseen")
    for col in ("model", *cols):
        t.add_column(col, justify="left" if col == "model" else "right")
    t.add_row(
        "teacher",
        _pct(ctx.metrics["teacher"]["test_acc"]),
        unseen("teacher_acc_on_omitted"),
        "",
        "",
    )
    if o.get("baseline_test_acc") is not None:
        t.add_row(
            "scratch",
            _pct(o["baseline_test_acc"]),
            unseen("baseline_acc_on_omitted"),
            _pct(o["baseline_test_acc_adjusted"]),
            unseen("baseline_acc_on_omitted_adjusted"),
        )
    t.add_row(
        "distilled",
        _pct(o["student_test_acc"]),
        unseen("student_acc_on_omitted"),
        _pct(o["student_test_acc_adjusted"]),
        unseen("student_acc_on_omitted_adjusted"),
    )
    if "last_epoch" in o:
        le = o["last_epoch"]
        t.add_row(
            f"distilled, last epoch (bias {le['bias']:.2f})",
            _pct(le["student_test_acc"]),
            unseen("student_acc_on_omitted", le),
            _pct(le["student_test_acc_adjusted"]),
            unseen("student_acc_on_omitted_adjusted", le),
        )
    ctx.job.reporter.console.print(t)


# --------------------------------------------------------------------------- small data


def _gap(student: float | None, scratch: float | None, full: float | None) -> float | None:
    """Share of the scratch-to-full-data gap that the distilled student closes."""
    if None in (student, scratch, full) or full - scratch <= 0:  # type: ignore[operator]
        return None
    return (student - scratch) / (full - scratch)  # type: ignore[operator]


@register_analysis(
    "small_data",
    lambda cfg: cfg.dataset.train_fraction < 1 or bool(cfg.dataset.keep_classes),
    needs_teacher=False,
)
def small_data(ctx: Context) -> dict[str, Any]:
    cfg, p, m = ctx.cfg, ctx.job, ctx.metrics
    # Through the store: shared by the jobs of every seed/sweep cell with the same student.
    full = p.baseline(full_data=True, epochs=cfg.analysis.full_data_epochs)
    full_acc = _acc(ctx.logits(full, p.data.x_test), p.data.y_test.cpu())
    scratch = m["baseline"]["test_acc"] if m.get("baseline") else None
    student = m["student"]["test_acc"]
    out: dict[str, Any] = {
        "train_fraction": float(cfg.dataset.train_fraction),
        "keep_classes": [int(c) for c in cfg.dataset.keep_classes],
        "train_size": len(p.data.student_idx),
        # the distilled student's images without labels (dataset.unlabelled_transfer)
        "unlabelled_size": transfer_rows(p.data) - len(p.data.student_idx),
        "full_train_size": len(p.data.y_train),
        "teacher_test_acc": m["teacher"]["test_acc"] if m.get("teacher") else None,
        "baseline_test_acc": scratch,
        "student_test_acc": student,
        "full_data_baseline_test_acc": full_acc,
        "full_data_baseline_from_store": p.reports["full_baseline"].from_cache,
        "full_data_baseline_epochs": cfg.analysis.full_data_epochs or cfg.student.train.epochs,
        "student_epochs": cfg.student.train.epochs,
        "gap_closed": _gap(student, scratch, full_acc),
    }
    om = m.get("omitted")
    last = m["student"].get("last_test_acc")
    out["student_test_acc_last_epoch"] = last
    out["gap_closed_last_epoch"] = _gap(last, scratch, full_acc)
    if om:  # a class-restricted transfer set: also after the bias adjustment
        out["student_test_acc_adjusted"] = om["student_test_acc_adjusted"]
        out["gap_closed_adjusted"] = _gap(om["student_test_acc_adjusted"], scratch, full_acc)
        if "last_epoch" in om:
            adj_last = om["last_epoch"]["student_test_acc_adjusted"]
            out["student_test_acc_last_epoch_adjusted"] = adj_last
            out["gap_closed_last_epoch_adjusted"] = _gap(adj_last, scratch, full_acc)
    _plot_small(out, p.data.name, ctx.run_dir / "small_data.png")
    out["figures"] = ["small_data.png"]
    from rich.table import Table

    t = Table(
        title=f"small data: students on {out['train_size']} of {out['full_train_size']} "
        f"training images{_unlabelled_note(out)}",
        title_style="bold",
    )
    t.add_column("model")
    t.add_column("test acc", justify="right")
    for label, v in _bars(out):
        t.add_row(label, _pct(v))
    gc = out["gap_closed"]
    t.caption = f"gap closed by soft targets: {'-' if gc is None else f'{100 * gc:.1f}%'}"
    p.reporter.console.print(t)
    return out


def _unlabelled_note(o: dict[str, Any]) -> str:
    n = o.get("unlabelled_size") or 0
    return f"; the distilled one also on {n} without labels" if n else ""


def _bars(o: dict[str, Any]) -> list[tuple[str, float | None]]:
    more = " + unlabelled" if o.get("unlabelled_size") else ""
    bars = [
        ("scratch, subset", o["baseline_test_acc"]),
        (f"distilled, subset{more}", o["student_test_acc"]),
    ]
    if "student_test_acc_adjusted" in o:
        bars.append(("distilled, subset, bias-adjusted", o["student_test_acc_adjusted"]))
    bars += [
        ("scratch, all data", o["full_data_baseline_test_acc"]),
        ("teacher, all data", o["teacher_test_acc"]),
    ]
    return bars


def _plot_small(o: dict[str, Any], dataset: str, path: Path) -> None:
    if not current().is_main:  # rank 0 draws for all ranks
        return
    plt = _plt()
    bars = [(lab, v) for lab, v in _bars(o) if v is not None]
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ys = np.arange(len(bars))
    ax.barh(ys, [v for _, v in bars], color=[f"C{i}" for i in range(len(bars))])
    for yv, (_, v) in zip(ys, bars, strict=True):
        ax.text(v + 0.005, yv, f"{100 * v:.1f}%", va="center", fontsize=8)
    ax.set_yticks(ys)
    ax.set_yticklabels([lab for lab, _ in bars], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("test accuracy")
    what = f"classes {o['keep_classes']}" if o["keep_classes"] else ""
    frac = f"{100 * o['train_fraction']:g}% of the data" if o["train_fraction"] < 1 else ""
    ax.set_title(
        f"{dataset}: transfer set = {' & '.join(x for x in (frac, what) if x)} "
        f"({o['train_size']} images{_unlabelled_note(o)})",
        fontsize=9,
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------- soft targets


@register_analysis("soft_targets", lambda cfg: bool(cfg.analysis.dark_knowledge))
def soft_targets(ctx: Context) -> dict[str, Any]:
    d = ctx.job.data
    logits = {
        "teacher": ctx.logits(ctx.teacher, d.x_test),
        "distilled": ctx.logits(ctx.student, d.x_test),
    }
    if ctx.baseline is not None:
        logits["scratch"] = ctx.logits(ctx.baseline, d.x_test)
    an = ctx.cfg.analysis
    out = dark_knowledge(
        d, logits, list(an.temperatures), an.examples, ctx.run_dir, ctx.job.reporter.console
    )
    return out
