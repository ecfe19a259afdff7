"""The end of a sweep: one table, summary.csv/summary.json, a heat map and a line plot.

Everything is rebuilt from what the jobs left on disk (``metrics.json`` and
``.hydra/overrides.yaml`` in each job directory), so it works the same for every launcher
(local, joblib, submitit) and can be rebuilt at any time with ``kdrun summarize DIR``: Hydra
skips its end-of-multirun callback when a job raises.

What is reported comes from the jobs' task (``kdrun.tasks``, named by each metrics.json's
``task``): its headline test metric and direction (classification: test accuracy, higher is
better; language modelling: test bits per byte, lower is better) and the validation metric the
best job is picked by. Column names follow the headline (``student_acc``, ``student_bpb``).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from kdrun import errors
from kdrun.data import DATASETS
from kdrun.errors import KdrunError
from kdrun.report.evidence import fmt_p, t_interval, wilson
from kdrun.report.files import make_console, read_metrics
from kdrun.report.run import fmt_acc
from kdrun.store import atomic_write, atomic_write_json, atomic_write_text
from kdrun.tasks import TASKS

log = logging.getLogger("kdrun")

SUMMARY_FORMAT = 1
FILES = ("summary.csv", "summary.json", "heatmap.png", "acc_vs_T.png")
# Always reported; any other override whose value differs between jobs is a column too.
GRID = ("T", "alpha", "seed")
DEFAULT_TASK = "classify"  # metrics.json from before tasks existed: image classification


class SweepError(KdrunError):
    """The directory given is not a sweep directory (or holds no job)."""


@dataclass(frozen=True)
class SweepMetric:
    """What a sweep of one task reports, read off its Task: the headline test metric and its
    direction, the validation metric the best job is picked by (and its direction), the
    headline in words and its format in the run table (pct: a fraction shown in %)."""

    task: str
    headline: str  # test_acc | test_bpb: a key of each stage in metrics.json
    higher_is_better: bool
    selection: str  # val_acc | val_bpb: the student's key the best job is picked by
    selection_higher_is_better: bool
    name: str  # accuracy | bits per byte
    fmt: str  # pct | num | num2

    @classmethod
    def of(cls, task: Any) -> SweepMetric:
        fmt = next((c.fmt for c in task.columns if c.key == task.headline), "num")
        return cls(
            task=task.name,
            headline=task.headline,
            higher_is_better=task.higher_is_better,
            selection=task.selection.name,
            selection_higher_is_better=task.selection.higher_is_better,
            name=getattr(task, "headline_name", None) or task.headline,
            fmt=fmt,
        )

    @property
    def short(self) -> str:
        """The headline's column suffix: acc, bpb."""
        return self.headline.removeprefix("test_")

    def col(self, stage: str) -> str:
        """A stage's headline column: student_acc, baseline_bpb, ..."""
        return f"{stage}_{self.short}"

    @property
    def val_col(self) -> str:
        """The student's validation column: student_val (accuracy, as summaries always had
        it) or student_val_<short> (student_val_bpb)."""
        return "student_val" if self.short == "acc" else f"student_val_{self.short}"

    @property
    def pct(self) -> bool:
        return self.fmt == "pct"

    @property
    def label(self) -> str:
        """An axis label for the headline: 'test accuracy (%)', 'test bits per byte'."""
        return f"test {self.name}" + (" (%)" if self.pct else "")

    @property
    def digits(self) -> int:
        return 2 if self.fmt in ("pct", "num2") else 4

    def shown(self, v: float) -> float:
        """The number drawn: accuracy in %, anything else as it is."""
        return 100 * v if self.pct else v

    def text(self, v: Any, sd: Any = None) -> str:
        """A table cell: '84.00%', '84.00% ± 0.50', '7.3703', '7.3703 ± 0.0120'."""
        if not _finite(v):
            return "-"
        s = fmt_acc(v) if self.pct else f"{v:.{self.digits}f}"
        return s + (f" ± {self.shown(sd):.{self.digits}f}" if _finite(sd) else "")

    def ref(self, v: float) -> str:
        """A reference in a title or legend: '82.20%', '7.0706 bpb'."""
        return f"{self.shown(v):.{self.digits}f}" + ("%" if self.pct else f" {self.short}")

    def gain(self, v: Any, sd: Any = None) -> str:
        """kd_gain (positive: KD helped) in the headline's units: '1.20 pt', '+0.0154 bpb'."""
        if not _finite(v):
            return "-"
        if self.pct:
            return self.text(v, sd).replace("%", " pt")
        sd_text = f" ± {sd:.{self.digits}f}" if _finite(sd) else ""
        return f"{v:+.{self.digits}f}{sd_text} {self.short}"

    def better(self, v: float) -> float:
        """A key under which larger is better (for sorting and picking the best)."""
        return v if self.higher_is_better else -v

    def columns(self) -> tuple[str, ...]:
        """The numeric columns aggregated over seeds."""
        return (
            self.col("teacher"),
            self.col("baseline"),
            self.col("student"),
            "kd_gain",
            "agreement",
            "teacher_seconds",
            "baseline_seconds",
            "student_seconds",
            "wall_seconds",
        )

    def describe(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "headline": self.headline,
            "higher_is_better": self.higher_is_better,
            "selection": self.selection,
            "selection_higher_is_better": self.selection_higher_is_better,
            "columns": {
                "teacher": self.col("teacher"),
                "baseline": self.col("baseline"),
                "student": self.col("student"),
                "student_val": self.val_col,
            },
        }


def metric_for(task_name: str) -> SweepMetric:
    task = TASKS.get(task_name)
    if task is None:
        raise SweepError(
            f"the jobs ran task '{task_name}', which this kdrun does not know (known: "
            f"{', '.join(sorted(TASKS))}); summarize the sweep where that task is installed"
        )
    return SweepMetric.of(task)


@dataclass
class Summary:
    sweep_dir: Path
    keys: list[str]  # swept keys besides T, alpha, seed (e.g. dataset)
    jobs: list[dict[str, Any]]
    aggregates: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    metric: SweepMetric | None = None  # None: the jobs' (sweep_metric)

    def __post_init__(self) -> None:
        if self.metric is None:
            self.metric = sweep_metric(self.jobs)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [j for j in self.jobs if j["status"] != "completed"]

    @property
    def exit_code(self) -> int:
        """The worst exit code of the jobs, from the error class each failed job recorded."""
        codes = [
            errors.Interrupted.exit_code
            if j["status"] == "interrupted"
            else getattr(getattr(errors, j.get("error_type") or "", None), "exit_code", 1)
            for j in self.failed
        ]
        return max([c if isinstance(c, int) else 1 for c in codes], default=0)


# ----------------------------------------------------------------------------- collect
def _sort_key(rel: Path) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in rel.parts)


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Job directories under a sweep: those holding .hydra/overrides.yaml or metrics.json."""
    found = {
        p.parent.parent for p in sweep_dir.rglob("overrides.yaml") if p.parent.name == ".hydra"
    }
    found |= {p.parent for p in sweep_dir.rglob("metrics.json")}
    found = {d for d in found if ".submitit" not in d.relative_to(sweep_dir).parts}
    return sorted(found, key=lambda d: _sort_key(d.relative_to(sweep_dir)))


def read_overrides(job_dir: Path) -> dict[str, str]:
    """The job's task overrides (``key=value``) as Hydra recorded them."""
    try:
        items = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []
    except (OSError, yaml.YAMLError):
        return {}
    out = {}
    for it in items:
        k, sep, v = str(it).partition("=")
        if sep:
            out[k.lstrip("+~")] = v
    return out


def _num(x: Any, kind: type) -> Any:
    try:
        return kind(x)
    except (TypeError, ValueError):
        return x


def _stage(m: dict[str, Any], stage: str, key: str) -> Any:
    s = m.get(stage)
    return s.get(key) if isinstance(s, dict) else None


def job_task(m: dict[str, Any], ov: dict[str, str]) -> str:
    """The task a job ran: metrics.json's ``task``; for a job that stopped before recording
    it (or ran before tasks existed), its data set's task."""
    if m.get("task"):
        return str(m["task"])
    ds = m.get("dataset") or ((m.get("config") or {}).get("dataset") or {}).get("name")
    spec = DATASETS.get(str(ds or ov.get("dataset")))
    return spec.task if spec is not None else DEFAULT_TASK


def sweep_task(sweep_dir: Path, tasks: list[str], statuses: list[str]) -> str:
    """The one task a sweep's numbers are of: that of its completed jobs (of all its jobs
    when none completed). Completed jobs of two tasks have no common column: an error."""
    done = sorted({t for t, st in zip(tasks, statuses, strict=True) if st == "completed"})
    if len(done) > 1:
        raise SweepError(
            f"{sweep_dir} holds completed jobs of several tasks ({', '.join(done)}), whose "
            f"numbers share no column; sweep each task in its own directory"
        )
    if done:
        return done[0]
    return Counter(tasks).most_common(1)[0][0] if tasks else DEFAULT_TASK


def job_row(
    m: dict[str, Any],
    job_dir: Path,
    name: str,
    ov: dict[str, str],
    keys: list[str],
    metric: SweepMetric,
    task: str,
) -> dict[str, Any]:
    row: dict[str, Any] = {"job": name, **dict.fromkeys(keys)}  # filled last, as swept
    eff = m.get("effective")
    for k, kind in (("T", float), ("alpha", float), ("seed", int)):
        if eff is not None and k in eff:  # what the method used; null: a knob it ignores
            row[k] = eff[k]
        else:
            row[k] = _num(m[k] if m.get(k) is not None else ov.get(k), kind)
    status = m.get("status", "missing")
    error = m.get("error")
    if status == "missing":
        error = "no metrics.json: the job did not start or died before writing it"
    elif status == "running":
        error = error or "still running, or killed before it could record its end"
    cfg = m.get("config") or {}
    h = metric.headline
    row.update(
        status=status,
        error=error,
        error_type=m.get("error_type"),
        task=task,
        dataset=m.get("dataset"),
        teacher=(cfg.get("teacher") or {}).get("name"),
        student=(cfg.get("student") or {}).get("name"),
        **{
            metric.col("teacher"): _stage(m, "teacher", h),
            "teacher_from_cache": _stage(m, "teacher", "from_cache"),
            metric.col("baseline"): _stage(m, "baseline", h),
            "baseline_from_cache": _stage(m, "baseline", "from_cache"),
            metric.col("student"): _stage(m, "student", h),
            metric.val_col: _stage(m, "student", metric.selection),
        },
        kd_gain=m.get("kd_gain"),
        **_evidence_cols(m.get("evidence")),
        val_images=_val_images(m),
        agreement=_stage(m, "student", "agreement"),
        teacher_seconds=_stage(m, "teacher", "train_seconds"),
        baseline_seconds=_stage(m, "baseline", "train_seconds"),
        student_seconds=_stage(m, "student", "train_seconds"),
        wall_seconds=m.get("wall_seconds"),
        run_dir=str(job_dir),
    )
    row.update({k: ov.get(k) for k in keys})  # e.g. dataset=mnist, not the metadata
    return row


def _evidence_cols(ev: Any) -> dict[str, Any]:
    """The job's paired test of kd_gain (metrics.json ``evidence``), flat for the CSV."""
    ev = ev if isinstance(ev, dict) else {}
    lo, hi = ev.get("kd_gain_ci") or (None, None)
    return {
        "kd_gain_lo": lo,
        "kd_gain_hi": hi,
        "kd_gain_p": ev.get("kd_gain_p"),
        "verdict": ev.get("verdict"),
    }


def _val_images(m: dict[str, Any]) -> int | None:
    """How many validation images the student was selected on (its accuracy's sample size)."""
    data = m.get("data") if isinstance(m.get("data"), dict) else {}
    n = data.get("student_val_size", data.get("val_size"))
    return n if isinstance(n, int) and n > 0 else None


def collect(sweep_dir: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(other swept keys, one row per job) for the sweep in ``sweep_dir``; the rows hold the
    numbers of the sweep's task (``sweep_metric(rows)``)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SweepError(
            f"{sweep_dir} is not a directory; give a sweep directory such as "
            f"outputs/multirun/<date>/<time>"
        )
    if not (sweep_dir / "multirun.yaml").is_file():
        inner = sorted(p.parent for p in sweep_dir.glob("*/multirun.yaml"))
        if inner:
            raise SweepError(
                f"{sweep_dir} holds several sweeps; summarize one of: "
                + ", ".join(str(p) for p in inner[:5])
            )
    dirs = find_job_dirs(sweep_dir)
    if not dirs:
        raise SweepError(
            f"{sweep_dir} holds no job (no */metrics.json or */.hydra); give a "
            f"sweep directory such as outputs/multirun/<date>/<time>"
        )
    ovs = [read_overrides(d) for d in dirs]
    keys: list[str] = []
    for ov in ovs:
        for k in ov:
            if k not in keys and k not in GRID and len({o.get(k) for o in ovs}) > 1:
                keys.append(k)
    names = [d.relative_to(sweep_dir).as_posix() if d != sweep_dir else "." for d in dirs]
    ms = [read_metrics(d / "metrics.json") or {} for d in dirs]
    tasks = [job_task(m, ov) for m, ov in zip(ms, ovs, strict=True)]
    task = sweep_task(sweep_dir, tasks, [m.get("status", "missing") for m in ms])
    metric = metric_for(task)
    jobs = zip(ms, dirs, names, ovs, tasks, strict=True)
    rows = [job_row(m, d, n, ov, keys, metric, t) for m, d, n, ov, t in jobs]
    return keys, rows


def sweep_metric(rows: list[dict[str, Any]]) -> SweepMetric:
    """What the rows of ``collect`` report: the task of their completed jobs."""
    task = sweep_task(Path("."), [r["task"] for r in rows], [r["status"] for r in rows])
    return metric_for(task)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def aggregate(
    rows: list[dict[str, Any]], keys: list[str], metric: SweepMetric | None = None
) -> list[dict[str, Any]]:
    """One row per cell (keys, T, alpha) with mean and sample std over seeds (>= 2 seeds)."""
    if len({r["seed"] for r in rows}) < 2:
        return []
    metric = metric or sweep_metric(rows)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in (*keys, "T", "alpha")), []).append(r)
    out = []
    for gk, rs in groups.items():
        ok = [r for r in rs if r["status"] == "completed"]
        agg: dict[str, Any] = dict(zip((*keys, "T", "alpha"), gk, strict=True))
        agg.update(
            seeds=sorted({r["seed"] for r in rs}, key=str),
            n=len(ok),
            n_failed=len(rs) - len(ok),
            dataset=rs[0]["dataset"],
            teacher=rs[0]["teacher"],
            student=rs[0]["student"],
        )
        for c in metric.columns():
            vals = [r[c] for r in ok if _finite(r[c])]
            agg[f"{c}_mean"] = statistics.fmean(vals) if vals else None
            agg[f"{c}_std"] = statistics.stdev(vals) if len(vals) > 1 else None
        agg.update(_seed_evidence(ok, metric))
        out.append(agg)
    return out


def _seed_evidence(ok: list[dict[str, Any]], metric: SweepMetric) -> dict[str, Any]:
    """Over the completed seeds of one setting: 95% t-intervals of the student's headline,
    of kd_gain and of the validation score, and each seed's own gain with its paired test
    (seeds of one setting share the teacher, so the gains are paired within each seed)."""
    out: dict[str, Any] = {}
    for c in (metric.col("student"), "kd_gain", metric.val_col):
        t = t_interval([r[c] for r in ok if _finite(r.get(c))])
        out[f"{c}_ci"] = t["ci"]
        if c == metric.val_col:
            out[f"{c}_mean"], out[f"{c}_std"] = t["mean"], t["std"]
    out["per_seed"] = [
        {
            k: r.get(k)
            for k in (
                "seed",
                "kd_gain",
                "kd_gain_lo",
                "kd_gain_hi",
                "kd_gain_p",
                "verdict",
                metric.col("baseline"),
                metric.col("student"),
            )
        }
        for r in sorted(ok, key=lambda r: str(r["seed"]))
    ]
    return out


# ----------------------------------------------------------------------------- write
def _csv(keys: list[str], jobs: list[dict], aggs: list[dict], metric: SweepMetric) -> str:
    cols = ["row", "job", *keys, *GRID, "status", "n", "n_failed"]
    for c in metric.columns():
        cols += [c, f"{c}_std"]
    cols += ["kd_gain_lo", "kd_gain_hi", "kd_gain_p", "verdict", "val_images"]
    cols += [f"{metric.col('student')}_ci", "kd_gain_ci"]  # over seeds: 'lo hi'
    cols += [
        "teacher_from_cache",
        "baseline_from_cache",
        "dataset",
        "teacher",
        "student",
        "error",
        "run_dir",
    ]
    cols = list(dict.fromkeys(cols))  # a swept key may also be a column here (dataset)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for j in jobs:
        w.writerow({"row": "job", **j})
    for a in aggs:
        r = {
            "row": "mean_std",
            **a,
            "seed": " ".join(str(s) for s in a["seeds"]),
            "status": "completed" if a["n"] else "failed",
        }
        for c in metric.columns():
            r[c] = a[f"{c}_mean"]
        for c in (metric.col("student"), "kd_gain"):
            ci = a.get(f"{c}_ci")
            r[f"{c}_ci"] = f"{ci[0]:.6g} {ci[1]:.6g}" if ci else None
        w.writerow(r)
    return buf.getvalue()


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    return v


def _cells(s: Summary) -> list[dict[str, Any]]:
    """What the plots show: per (keys, T, alpha), over seeds when there are several; ``score``
    is the student's headline, ``t_score``/``b_score`` the teacher's and the baseline's."""
    m = s.metric
    if s.aggregates:
        return [
            {
                **a,
                "ok": a["n"] > 0,
                "score": a[f"{m.col('student')}_mean"],
                "std": a[f"{m.col('student')}_std"],
                "t_score": a[f"{m.col('teacher')}_mean"],
                "b_score": a[f"{m.col('baseline')}_mean"],
            }
            for a in s.aggregates
        ]
    return [
        {
            **j,
            "ok": j["status"] == "completed",
            "score": j[m.col("student")],
            "std": None,
            "t_score": j[m.col("teacher")],
            "b_score": j[m.col("baseline")],
        }
        for j in s.jobs
    ]


def _mean(vals: list[Any]) -> float | None:
    vals = [v for v in vals if _finite(v)]
    return statistics.fmean(vals) if vals else None


def _panels(s: Summary) -> list[tuple[str, list[dict[str, Any]]]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for c in _cells(s):
        if _finite(c["T"]) and _finite(c["alpha"]):
            groups.setdefault(tuple(c[k] for k in s.keys), []).append(c)
    return [
        (", ".join(f"{k}={v}" for k, v in zip(s.keys, gk, strict=True)), cs)
        for gk, cs in groups.items()
    ]


def _title(cells: list[dict[str, Any]], label: str, seeds: int, metric: SweepMetric) -> str:
    c0 = cells[0]
    head = " · ".join(
        str(x)
        for x in (c0.get("dataset"), f"{c0.get('teacher')} → {c0.get('student')}", label)
        if x
    )
    ref = []
    t, b = _mean([c["t_score"] for c in cells]), _mean([c["b_score"] for c in cells])
    if t is not None:
        ref.append(f"teacher {metric.ref(t)}")
    if b is not None:
        ref.append(f"baseline {metric.ref(b)}")
    if seeds > 1:
        ref.append(f"mean of {seeds} seeds")
    return head + ("\n" + " · ".join(ref) if ref else "")


def _cmap(metric: SweepMetric):
    """Red to green, green the better end (low bits per byte, high accuracy); grey: missing."""
    import matplotlib

    name = "RdYlGn" if metric.higher_is_better else "RdYlGn_r"
    return matplotlib.colormaps[name].with_extremes(bad="#d0d0d0")


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)  # constrained layout: no "tight" second pass
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def is_search(s: Summary) -> bool:
    """A search (Optuna) rather than a grid: most T × alpha cells of a panel were never run."""
    for _label, cells in _panels(s):
        n_t, n_a = len({c["T"] for c in cells}), len({c["alpha"] for c in cells})
        if len(cells) < 0.5 * n_t * n_a:
            return True
    return False


def plot_search(s: Summary, path: Path) -> bool:
    """A search's trials over (T, alpha): T on a log axis, colour = the student's headline
    test metric, the best trial by validation circled."""
    from matplotlib.figure import Figure

    m = s.metric
    panels = _panels(s)
    if not panels:
        return False
    fig = Figure(figsize=(5.2 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, cells) in zip(axes, panels, strict=True):
        ok = [c for c in cells if c["ok"] and _finite(c["score"])]
        sc = ax.scatter(
            [c["T"] for c in ok],
            [c["alpha"] for c in ok],
            s=60,
            c=[m.shown(c["score"]) for c in ok],
            cmap=_cmap(m),
            edgecolors="k",
        )
        bad = [c for c in cells if c not in ok]
        ax.scatter([c["T"] for c in bad], [c["alpha"] for c in bad], marker="x", c="gray")
        best = best_by_val(ok, m)
        if best is not None:
            ax.scatter(
                [best["T"]],
                [best["alpha"]],
                s=260,
                facecolors="none",
                edgecolors="b",
                label="best by validation",
            )
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xscale("log")
        ax.set_xlabel("temperature T (log scale)")
        ax.set_ylabel("alpha (weight of the soft term)")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title("search trials · " + _title(cells, label, 1, m), fontsize=10)
        fig.colorbar(sc, ax=ax).set_label(f"student {m.label}")
    _save(fig, path)
    return True


def best_by_val(rows: list[dict[str, Any]], metric: SweepMetric) -> dict[str, Any] | None:
    """The completed job with the best student validation score (the selection rule: the
    highest validation accuracy, the lowest validation bits per byte)."""
    col, sign = metric.val_col, 1.0 if metric.selection_higher_is_better else -1.0
    ok = [r for r in rows if r.get("status", "completed") == "completed"]
    ok = [r for r in ok if _finite(r.get(col))]
    return max(ok, key=lambda r: sign * r[col], default=None)


@dataclass
class Choice:
    """The best setting by validation and what cannot be told apart from it: ``ties`` have
    exactly its validation score (itself included), ``near`` lie inside its 95% interval
    (``how`` says which interval; None where there is none, e.g. bits per byte of one seed)."""

    best: dict[str, Any]
    ties: list[dict[str, Any]]
    near: list[dict[str, Any]]
    interval: tuple[float, float] | None
    how: str
    over_seeds: bool


def _val(r: dict[str, Any], m: SweepMetric, over_seeds: bool) -> Any:
    return r.get(f"{m.val_col}_mean") if over_seeds else r.get(m.val_col)


def choose(s: Summary) -> Choice | None:
    """The best setting by validation (over seeds' means when there are several seeds),
    its exact ties and the settings within noise of it. One seed, accuracy: the best's
    Wilson interval over its validation images; several seeds: the t-interval of the best
    setting's validation score over seeds. A paired test on validation outcomes would be
    sharper, but jobs do not keep per-image validation results."""
    m, over = s.metric, bool(s.aggregates)
    rows = s.aggregates if over else s.jobs
    rows = [r for r in rows if (r["n"] if over else r["status"] == "completed")]
    rows = [r for r in rows if _finite(_val(r, m, over))]
    if not rows:
        return None
    sign = 1.0 if m.selection_higher_is_better else -1.0
    best = max(rows, key=lambda r: sign * _val(r, m, over))
    top = _val(best, m, over)
    ties = [r for r in rows if _val(r, m, over) == top]  # same images: equal counts
    interval, how = None, ""
    if over and best.get(f"{m.val_col}_ci"):
        interval, how = tuple(best[f"{m.val_col}_ci"]), f"t-interval over {best['n']} seeds"
    elif not over and m.pct and best.get("val_images"):
        n = best["val_images"]
        interval = wilson(round(top * n), n)
        how = f"Wilson interval over {n} validation images"
    near = [
        r
        for r in rows
        if interval and r not in ties and interval[0] <= _val(r, m, over) <= interval[1]
    ]
    near.sort(key=lambda r: -sign * _val(r, m, over))
    return Choice(best, ties, near, interval, how, over)


def _setting(r: dict[str, Any], keys: list[str]) -> str:
    """'T=1 alpha=0.5' (and the other swept keys): a setting, without its seed."""
    return " ".join(
        [f"T={_knob(r['T'])}", f"alpha={_knob(r['alpha'])}"] + [f"{k}={r[k]}" for k in keys]
    )


def _same_setting(a: dict[str, Any], b: dict[str, Any], keys: list[str]) -> bool:
    return all(a.get(k) == b.get(k) for k in (*keys, "T", "alpha"))


def plot_heatmap(s: Summary, path: Path) -> bool:
    """The student's headline test metric over T × alpha; colours centred on the baseline's."""
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    m = s.metric
    panels = _panels(s)
    if not panels:
        return False
    seeds = len({j["seed"] for j in s.jobs})
    choice = choose(s)
    fig = Figure(figsize=(5.2 * len(panels), 4.2), layout="constrained")
    for ax, (label, cells) in zip(
        fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True
    ):
        ts = sorted({c["T"] for c in cells})
        als = sorted({c["alpha"] for c in cells})
        grid = [[math.nan] * len(ts) for _ in als]
        text = [["missing"] * len(ts) for _ in als]
        for c in cells:
            i, j = als.index(c["alpha"]), ts.index(c["T"])
            if c["ok"] and _finite(c["score"]):
                grid[i][j] = m.shown(c["score"])
                text[i][j] = f"{m.shown(c['score']):.{m.digits}f}" + (
                    f"\n±{m.shown(c['std']):.{m.digits}f}" if _finite(c["std"]) else ""
                )
            else:
                text[i][j] = "failed"
        vals = [v for r in grid for v in r if math.isfinite(v)]
        base = _mean([c["b_score"] for c in cells])
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 100.0 if m.pct else 1.0)
        eps = 0.01 if m.pct else 1e-4
        if base is not None:  # symmetric around the baseline: green = KD helped
            b0 = m.shown(base)
            d = max(abs(lo - b0), abs(hi - b0), eps)
            norm = Normalize(vmin=b0 - d, vmax=b0 + d)
        else:
            norm = Normalize(vmin=lo - eps, vmax=hi + eps)
        cmap = _cmap(m)
        im = ax.imshow(grid, cmap=cmap, norm=norm, aspect="auto", origin="lower")
        _annotate(ax, grid, text, cmap, norm)
        marked = _mark_choice(ax, cells, choice, s.keys, ts, als)
        ax.set_xticks(range(len(ts)), [f"{t:g}" for t in ts])
        ax.set_yticks(range(len(als)), [f"{a:g}" for a in als])
        ax.set_xlabel("temperature T")
        ax.set_ylabel("alpha (weight of the soft term)")
        title = f"student {m.label} · " + _title(cells, label, seeds, m)
        if marked:
            title += "\nframed: best by validation (solid), within noise of it (dashed)"
        ax.set_title(title, fontsize=10)
        cb = fig.colorbar(im, ax=ax)
        cb.set_label(f"student {m.label}" + (" · yellow = baseline" if base else ""))
        if base is not None:  # show only the range in use, not the symmetric padding
            cb.ax.set_ylim(min(lo, m.shown(base)), max(hi, m.shown(base)))
    _save(fig, path)
    return True


def _annotate(ax, grid: list[list[float]], text: list[list[str]], cmap, norm) -> None:
    """Each heat map cell's number, white on dark colours."""
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            r, g, b_, _ = cmap(norm(v)) if math.isfinite(v) else (1, 1, 1, 1)
            dark = 0.299 * r + 0.587 * g + 0.114 * b_ < 0.45
            ax.text(
                j,
                i,
                text[i][j],
                ha="center",
                va="center",
                fontsize=9,
                color="white" if dark else "black",
            )


def _mark_choice(ax, cells, choice: Choice | None, keys, ts, als) -> bool:
    """Frames the heat map's cells of the best setting and its ties (solid) and of those
    within noise of it (dashed); True if any cell of this panel is framed."""
    from matplotlib.patches import Rectangle

    if choice is None:
        return False
    marked = False
    for c in cells:
        tie = any(_same_setting(c, r, keys) for r in choice.ties)
        near = any(_same_setting(c, r, keys) for r in choice.near)
        if not (tie or near) or c["T"] not in ts or c["alpha"] not in als:
            continue
        j, i = ts.index(c["T"]), als.index(c["alpha"])
        ax.add_patch(
            Rectangle(
                (j - 0.46, i - 0.46),
                0.92,
                0.92,
                fill=False,
                edgecolor="#1f3fbf",
                lw=2.5 if tie else 1.5,
                ls="-" if tie else "--",
            )
        )
        marked = True
    return marked


def plot_lines(s: Summary, path: Path) -> bool:
    """The student's headline test metric vs T, one line per alpha; teacher and baseline as
    references."""
    from matplotlib.figure import Figure

    m = s.metric
    panels = _panels(s)
    if not panels:
        return False
    seeds = len({j["seed"] for j in s.jobs})
    fig = Figure(figsize=(5.2 * len(panels), 3.8), layout="constrained")
    for ax, (label, cells) in zip(
        fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True
    ):
        ok = [c for c in cells if c["ok"] and _finite(c["score"])]
        for a in sorted({c["alpha"] for c in ok}):
            pts = sorted(
                (c["T"], m.shown(c["score"]), m.shown(c["std"]) if _finite(c["std"]) else 0.0)
                for c in ok
                if c["alpha"] == a
            )
            ax.errorbar(
                [p[0] for p in pts],
                [p[1] for p in pts],
                yerr=[p[2] for p in pts],
                marker="o",
                capsize=3,
                label=f"alpha={a:g}",
            )
        for ref, style, name in (("t_score", "--", "teacher"), ("b_score", ":", "baseline")):
            v = _mean([c[ref] for c in cells])
            if v is not None:
                ax.axhline(m.shown(v), color="k", ls=style, lw=1, label=f"{name} {m.ref(v)}")
        ts = sorted({c["T"] for c in ok})
        if len(ts) > 1 and min(ts) > 0:
            ax.set_xscale("log", base=2)
            ax.set_xticks(ts, [f"{t:g}" for t in ts])
        ax.set_xlabel("temperature T")
        ax.set_ylabel(f"student {m.label}" + ("" if m.higher_is_better else " (lower is better)"))
        ax.set_title(_title(cells, label, seeds, m), fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    _save(fig, path)
    return True


# ----------------------------------------------------------------------------- show
def _swept(v: Any) -> str:
    """A swept number as the table shows it: 4 not 4.0, "-" when the job had none."""
    return f"{v:g}" if _finite(v) else ("-" if v is None else str(v))


def summary_table(s: Summary) -> Table:
    """Cells sorted by the student's headline (over seeds when there are several), the best
    (highest accuracy, lowest bits per byte) first and highlighted."""
    m = s.metric
    agg = bool(s.aggregates)
    rows = s.aggregates if agg else s.jobs
    sfx = "_mean" if agg else ""
    student = m.col("student")

    def score(r: dict[str, Any]) -> float:
        v = r.get(f"{student}{sfx}")
        return m.better(v) if _finite(v) else -math.inf

    rows = sorted(rows, key=score, reverse=True)
    t = Table(title=f"kdrun sweep · {s.sweep_dir}", title_style="bold")
    cols = [
        *s.keys,
        "T",
        "alpha",
        "seeds" if agg else "seed",
        f"student {m.short}",
        "KD gain",
        "agree",
        "teacher",
        "baseline",
        "time",
        "status",
    ]
    for c in cols:
        t.add_column(c, justify="left" if c in (*s.keys, "status") else "right", no_wrap=True)
    best = next((r for r in rows if _finite(r.get(f"{student}{sfx}"))), None)
    for r in rows:
        if agg:
            status = f"{r['n']} ok" + (f", {r['n_failed']} failed" if r["n_failed"] else "")
            seed = str(len(r["seeds"]))
        else:
            status, seed = r["status"], str(r["seed"])
        secs = r.get(f"student_seconds{sfx}")
        t.add_row(
            *[str(r[k]) for k in s.keys],
            _swept(r["T"]),
            _swept(r["alpha"]),
            seed,
            m.text(r.get(f"{student}{sfx}"), r.get(f"{student}_std") if agg else None),
            m.gain(r.get(f"kd_gain{sfx}"), r.get("kd_gain_std") if agg else None),
            fmt_acc(r.get(f"agreement{sfx}")),
            m.text(r.get(f"{m.col('teacher')}{sfx}")),
            m.text(r.get(f"{m.col('baseline')}{sfx}")),
            f"{secs:.1f}s" if _finite(secs) else "-",
            status,
            style="bold green" if r is best else (None if _finite(score(r)) else "red"),
        )
    counts = Counter(j["status"] for j in s.jobs)
    t.caption = f"{len(s.jobs)} job(s): " + ", ".join(f"{n} {st}" for st, n in counts.items())
    t.caption += " · mean ± std over seeds" if agg else ""
    if not m.higher_is_better:
        t.caption += f" · {m.short} ({m.name}): lower is better; KD gain > 0: KD helped"
    t.caption_justify = "left"
    return t


def _knob(v: Any) -> str:
    """T or alpha as the method used it: '-' for one it ignores (recorded as null)."""
    return f"{v:.4g}" if _finite(v) else "-"


def show(s: Summary, console: Console) -> None:
    console.print(summary_table(s))
    for table in seed_tables(s):
        console.print(table)
    for line in choice_lines(s):
        console.print(line, highlight=False)
    for j in s.failed:
        where = ", ".join(
            f"{k}={j[k]:g}" if _finite(j[k]) else f"{k}={j[k]}"
            for k in (*s.keys, *GRID)
            if j.get(k) is not None
        )
        console.print(
            f"[red]{j['status']}[/] job {j['job']} ({where}): {j['error']}", highlight=False
        )
    console.print(f"[dim]summary: {', '.join(str(p) for p in s.files)}[/]", highlight=False)


def _selection_doc(s: Summary) -> dict[str, Any] | None:
    """summary.json's ``selection``: the best setting by validation, its exact ties and the
    settings within noise of it, as 'T=1 alpha=0.5' strings, with the interval used."""
    c = choose(s)
    if c is None:
        return None
    return {
        "best": _setting(c.best, s.keys),
        "ties": [_setting(r, s.keys) for r in c.ties],
        "within_noise": [_setting(r, s.keys) for r in c.near],
        "interval": list(c.interval) if c.interval else None,
        "interval_method": c.how or None,
        "over_seeds": c.over_seeds,
    }


def choice_lines(s: Summary) -> list[str]:
    """The end-of-sweep verdict on "best": the best setting by validation, or the settings
    that tie for it; then those within noise of it (never one of several silently)."""
    m = s.metric
    c = choose(s)
    if c is None or len(s.aggregates if c.over_seeds else s.jobs) < 2:
        return []
    val = f"validation {m.name}" + (" (mean over seeds)" if c.over_seeds else "")
    top = _val(c.best, m, c.over_seeds)
    sample = (
        f" ({c.best['val_images']} images)" if c.best.get("val_images") and not c.over_seeds else ""
    )
    if len(c.ties) > 1:
        tests = [
            r.get(f"{m.col('student')}_mean" if c.over_seeds else m.col("student")) for r in c.ties
        ]
        tests = [v for v in tests if _finite(v)]
        span = f"; test {m.text(min(tests))} to {m.text(max(tests))}" if tests else ""
        names = ", ".join(_setting(r, s.keys) for r in c.ties)
        lines = [f"{len(c.ties)} settings tie at {m.text(top)} {val}{sample}: {names}{span}"]
    elif c.over_seeds:
        b, sd = c.best, c.best.get(f"{m.val_col}_std")
        test = b.get(f"{m.col('student')}_mean")
        lines = [
            f"best by {val}: {_setting(b, s.keys)} (val {m.text(top, sd)}, test {m.text(test)})"
        ]
    else:
        b = c.best
        where = ", ".join(f"{k}={b[k]}" for k in s.keys)
        lines = [
            f"best by validation {m.name}: T={_knob(b['T'])}, alpha={_knob(b['alpha'])}"
            f"{', ' + where if where else ''}, seed={b['seed']} (val "
            f"{m.text(top)}, test {m.text(b[m.col('student')])}; job {b['job']})"
        ]
    if c.interval is None:
        if not m.pct and not c.over_seeds:
            lines.append(f"  (no interval for one seed's {m.name}: sweep seed=0,1,2 for one)")
        return lines
    lo, hi = c.interval
    ci = f"95% {c.how}: [{m.text(lo)}, {m.text(hi)}]"
    if c.near:
        near = ", ".join(
            f"{_setting(r, s.keys)} ({m.text(_val(r, m, c.over_seeds))})" for r in c.near
        )
        lines.append(f"  within noise of it ({ci}): {near}")
    else:
        lines.append(f"  no other setting is within noise of it ({ci})")
    return lines


def seed_tables(s: Summary, limit: int = 8) -> list[Table]:
    """With several seeds: one table per setting, each seed's baseline, student and paired
    gain (interval, p, verdict), then mean ± std and the 95% t-interval over seeds."""
    m = s.metric
    cells = [a for a in s.aggregates if a["n"]]
    out = []
    for a in cells[:limit]:
        t = Table(title=f"seeds · {_setting(a, s.keys)}", title_style="bold")
        unit = "points" if m.pct else m.short
        cols = ("seed", "baseline", "distilled", f"KD gain ({unit})", "95% CI", "p", "verdict")
        for col in cols:
            t.add_column(col, justify="left" if col == "verdict" else "right", no_wrap=True)
        for r in a["per_seed"]:
            lo, hi = r.get("kd_gain_lo"), r.get("kd_gain_hi")
            t.add_row(
                str(r["seed"]),
                m.text(r.get(m.col("baseline"))),
                m.text(r.get(m.col("student"))),
                _gain_cell(m, r.get("kd_gain")),
                f"[{_gain_cell(m, lo)}, {_gain_cell(m, hi)}]" if _finite(lo) else "-",
                fmt_p(r["kd_gain_p"]).removeprefix("p ").removeprefix("= ")
                if _finite(r.get("kd_gain_p"))
                else "-",
                r.get("verdict") or "-",
            )
        student, gain = m.col("student"), "kd_gain"
        t.add_row(
            "mean ± std",
            m.text(a.get(f"{m.col('baseline')}_mean"), a.get(f"{m.col('baseline')}_std")),
            m.text(a.get(f"{student}_mean"), a.get(f"{student}_std")),
            _gain_cell(m, a.get("kd_gain_mean"))
            + (
                f" ± {m.shown(a['kd_gain_std']):.{m.digits}f}"
                if _finite(a.get("kd_gain_std"))
                else ""
            ),
            "",
            "",
            "",
            style="bold",
        )
        t.add_row(
            "95% CI (t)",
            "",
            _interval(m, a.get(f"{student}_ci"), m.text),
            _interval(m, a.get(f"{gain}_ci"), lambda v: _gain_cell(m, v)),
            "",
            "",
            _seed_verdict(a.get(f"{gain}_ci"), m),
        )
        t.caption = f"{a['n']} seed(s) completed" + (
            f", {a['n_failed']} failed" if a["n_failed"] else ""
        )
        t.caption_justify = "left"
        out.append(t)
    return out


def _gain_cell(m: SweepMetric, v: Any) -> str:
    """A gain in the headline's units (the column says which) with its sign: '+1.39'."""
    return f"{m.shown(v) + 0.0:+.{m.digits}f}" if _finite(v) else "-"


def _interval(m: SweepMetric, ci: Any, text) -> str:
    return f"[{text(ci[0])}, {text(ci[1])}]" if ci else "-"


def _seed_verdict(ci: Any, m: SweepMetric) -> str:
    """Over seeds: the gain's t-interval excludes 0 (KD helps/hurts) or not."""
    if not ci:
        return "-"
    if ci[0] > 0:
        return "KD helps"
    if ci[1] < 0:
        return "KD hurts"
    return "within noise"


# ----------------------------------------------------------------------------- entry points
def summarize(sweep_dir: str | Path, console: Console | None = None) -> Summary:
    """Build (or rebuild) the summary files of a sweep directory and print its table."""
    sweep_dir = Path(sweep_dir)
    keys, jobs = collect(sweep_dir)
    metric = sweep_metric(jobs)
    s = Summary(sweep_dir, keys, jobs, aggregate(jobs, keys, metric), metric=metric)
    doc = {
        "format": SUMMARY_FORMAT,
        "sweep_dir": str(sweep_dir),
        "task": metric.task,
        "metric": metric.describe(),
        "swept": keys,
        "n_jobs": len(jobs),
        "n_failed": len(s.failed),
        "jobs": jobs,
        "aggregates": s.aggregates,
        "selection": _selection_doc(s),
    }
    atomic_write_text(_csv(keys, jobs, s.aggregates, metric), sweep_dir / "summary.csv")
    atomic_write_json(_json_safe(doc), sweep_dir / "summary.json")
    s.files = [sweep_dir / "summary.csv", sweep_dir / "summary.json"]
    heat = plot_search if is_search(s) else plot_heatmap  # a search's trials are scattered
    for name, plot in (("heatmap.png", heat), ("acc_vs_T.png", plot_lines)):
        try:
            if plot(s, sweep_dir / name):
                s.files.append(sweep_dir / name)
        except Exception as e:  # a plot must never hide the numbers
            log.warning("could not draw %s: %s: %s", name, type(e).__name__, e)
    show(s, console or make_console())
    return s


class SummaryCallback(Callback):
    """Hydra callback: builds the sweep summary in the launching process, for any launcher."""

    def __init__(self) -> None:
        self.sweep_dir: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Resolved now, so ${now:...} in the directory name is the one the launcher uses.
        self.sweep_dir = str(config.hydra.sweep.dir)
        storage = str(config.hydra.sweeper.get("storage") or "")
        if storage.startswith("sqlite:///"):  # a search's study file: SQLite cannot make dirs
            Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = self.sweep_dir or str(config.hydra.sweep.dir)
        try:
            s = summarize(sweep_dir)
        except Exception as e:
            print(
                f"kdrun: error: the sweep summary failed ({type(e).__name__}: {e}); rebuild "
                f"it with: kdrun summarize {sweep_dir}"
            )
            errors.EXIT.raise_to(1)
            return
        errors.EXIT.raise_to(s.exit_code)
