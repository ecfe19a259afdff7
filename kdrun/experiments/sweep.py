"""The end of a sweep: one table, summary.csv/summary.json, a heat map and a line plot.

Everything is rebuilt from what the jobs left on disk (``metrics.json`` and
``.hydra/overrides.yaml`` in each job directory), so it works the same for every launcher
(local, joblib, submitit) and can be rebuilt at any time with ``kdrun summarize DIR``: Hydra
skips its end-of-multirun callback when a job raises.
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
from kdrun.errors import KdrunError
from kdrun.experiments.job import make_console, read_metrics
from kdrun.report import fmt_acc
from kdrun.store import atomic_write, atomic_write_json, atomic_write_text

log = logging.getLogger("kdrun")

SUMMARY_FORMAT = 1
FILES = ("summary.csv", "summary.json", "heatmap.png", "acc_vs_T.png")
# Always reported; any other override whose value differs between jobs is a column too.
GRID = ("T", "alpha", "seed")
METRICS = (
    "teacher_acc",
    "baseline_acc",
    "student_acc",
    "kd_gain",
    "agreement",
    "teacher_seconds",
    "baseline_seconds",
    "student_seconds",
    "wall_seconds",
)


class SweepError(KdrunError):
    """The directory given is not a sweep directory (or holds no job)."""


@dataclass
class Summary:
    sweep_dir: Path
    keys: list[str]  # swept keys besides T, alpha, seed (e.g. dataset)
    jobs: list[dict[str, Any]]
    aggregates: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

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


def job_row(job_dir: Path, name: str, ov: dict[str, str], keys: list[str]) -> dict[str, Any]:
    m = read_metrics(job_dir / "metrics.json") or {}
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
    row.update(
        status=status,
        error=error,
        error_type=m.get("error_type"),
        dataset=m.get("dataset"),
        teacher=(cfg.get("teacher") or {}).get("name"),
        student=(cfg.get("student") or {}).get("name"),
        teacher_acc=_stage(m, "teacher", "test_acc"),
        teacher_from_cache=_stage(m, "teacher", "from_cache"),
        baseline_acc=_stage(m, "baseline", "test_acc"),
        baseline_from_cache=_stage(m, "baseline", "from_cache"),
        student_acc=_stage(m, "student", "test_acc"),
        student_val=_stage(m, "student", "val_acc"),
        kd_gain=m.get("kd_gain"),
        agreement=_stage(m, "student", "agreement"),
        teacher_seconds=_stage(m, "teacher", "train_seconds"),
        baseline_seconds=_stage(m, "baseline", "train_seconds"),
        student_seconds=_stage(m, "student", "train_seconds"),
        wall_seconds=m.get("wall_seconds"),
        run_dir=str(job_dir),
    )
    row.update({k: ov.get(k) for k in keys})  # e.g. dataset=mnist, not the metadata
    return row


def collect(sweep_dir: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(other swept keys, one row per job) for the sweep in ``sweep_dir``."""
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
    rows = [job_row(d, n, ov, keys) for d, n, ov in zip(dirs, names, ovs, strict=True)]
    return keys, rows


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def aggregate(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """One row per cell (keys, T, alpha) with mean and sample std over seeds (>= 2 seeds)."""
    if len({r["seed"] for r in rows}) < 2:
        return []
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
        for c in METRICS:
            vals = [r[c] for r in ok if _finite(r[c])]
            agg[f"{c}_mean"] = statistics.fmean(vals) if vals else None
            agg[f"{c}_std"] = statistics.stdev(vals) if len(vals) > 1 else None
        out.append(agg)
    return out


# ----------------------------------------------------------------------------- write
def _csv(keys: list[str], jobs: list[dict], aggs: list[dict]) -> str:
    cols = ["row", "job", *keys, *GRID, "status", "n", "n_failed"]
    for c in METRICS:
        cols += [c, f"{c}_std"]
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
        for c in METRICS:
            r[c] = a[f"{c}_mean"]
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
    """What the plots show: per (keys, T, alpha), over seeds when there are several."""
    if s.aggregates:
        return [
            {
                **a,
                "ok": a["n"] > 0,
                "acc": a["student_acc_mean"],
                "std": a["student_acc_std"],
                "t_acc": a["teacher_acc_mean"],
                "b_acc": a["baseline_acc_mean"],
            }
            for a in s.aggregates
        ]
    return [
        {
            **j,
            "ok": j["status"] == "completed",
            "acc": j["student_acc"],
            "std": None,
            "t_acc": j["teacher_acc"],
            "b_acc": j["baseline_acc"],
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


def _title(cells: list[dict[str, Any]], label: str, seeds: int) -> str:
    c0 = cells[0]
    head = " · ".join(
        str(x)
        for x in (c0.get("dataset"), f"{c0.get('teacher')} → {c0.get('student')}", label)
        if x
    )
    ref = []
    t, b = _mean([c["t_acc"] for c in cells]), _mean([c["b_acc"] for c in cells])
    if t is not None:
        ref.append(f"teacher {100 * t:.2f}%")
    if b is not None:
        ref.append(f"baseline {100 * b:.2f}%")
    if seeds > 1:
        ref.append(f"mean of {seeds} seeds")
    return head + ("\n" + " · ".join(ref) if ref else "")


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
    """A search's trials over (T, alpha): T on a log axis, colour = student test accuracy,
    the best trial by validation circled."""
    from matplotlib.figure import Figure

    panels = _panels(s)
    if not panels:
        return False
    fig = Figure(figsize=(5.2 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, cells) in zip(axes, panels, strict=True):
        ok = [c for c in cells if c["ok"] and _finite(c["acc"])]
        sc = ax.scatter(
            [c["T"] for c in ok],
            [c["alpha"] for c in ok],
            s=60,
            c=[100 * c["acc"] for c in ok],
            cmap="RdYlGn",
            edgecolors="k",
        )
        bad = [c for c in cells if c not in ok]
        ax.scatter([c["T"] for c in bad], [c["alpha"] for c in bad], marker="x", c="gray")
        best = best_by_val(ok)
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
        ax.set_title("search trials · " + _title(cells, label, 1), fontsize=10)
        fig.colorbar(sc, ax=ax).set_label("student test accuracy (%)")
    _save(fig, path)
    return True


def best_by_val(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The completed job with the best student validation accuracy (the selection rule)."""
    ok = [r for r in rows if r.get("status", "completed") == "completed"]
    ok = [r for r in ok if _finite(r.get("student_val"))]
    return max(ok, key=lambda r: r["student_val"], default=None)


def plot_heatmap(s: Summary, path: Path) -> bool:
    """Student test accuracy over T × alpha; colours centred on the baseline's accuracy."""
    import matplotlib
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    panels = _panels(s)
    if not panels:
        return False
    seeds = len({j["seed"] for j in s.jobs})
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
            if c["ok"] and _finite(c["acc"]):
                grid[i][j] = 100 * c["acc"]
                text[i][j] = f"{100 * c['acc']:.2f}" + (
                    f"\n±{100 * c['std']:.2f}" if _finite(c["std"]) else ""
                )
            else:
                text[i][j] = "failed"
        vals = [v for r in grid for v in r if math.isfinite(v)]
        base = _mean([c["b_acc"] for c in cells])
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 100.0)
        if base is not None:  # symmetric around the baseline: green = KD helped
            d = max(abs(lo - 100 * base), abs(hi - 100 * base), 0.01)
            norm = Normalize(vmin=100 * base - d, vmax=100 * base + d)
        else:
            norm = Normalize(vmin=lo - 0.01, vmax=hi + 0.01)
        cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#d0d0d0")
        im = ax.imshow(grid, cmap=cmap, norm=norm, aspect="auto", origin="lower")
        for i in range(len(als)):
            for j in range(len(ts)):
                r, g, b_, _ = cmap(norm(grid[i][j])) if math.isfinite(grid[i][j]) else (1, 1, 1, 1)
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
        ax.set_xticks(range(len(ts)), [f"{t:g}" for t in ts])
        ax.set_yticks(range(len(als)), [f"{a:g}" for a in als])
        ax.set_xlabel("temperature T")
        ax.set_ylabel("alpha (weight of the soft term)")
        ax.set_title("student test accuracy (%) · " + _title(cells, label, seeds), fontsize=10)
        cb = fig.colorbar(im, ax=ax)
        cb.set_label("student test accuracy (%)" + (" · yellow = baseline" if base else ""))
        if base is not None:  # show only the range in use, not the symmetric padding
            cb.ax.set_ylim(min(lo, 100 * base), max(hi, 100 * base))
    _save(fig, path)
    return True


def plot_lines(s: Summary, path: Path) -> bool:
    """Student test accuracy vs T, one line per alpha; teacher and baseline as references."""
    from matplotlib.figure import Figure

    panels = _panels(s)
    if not panels:
        return False
    seeds = len({j["seed"] for j in s.jobs})
    fig = Figure(figsize=(5.2 * len(panels), 3.8), layout="constrained")
    for ax, (label, cells) in zip(
        fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True
    ):
        ok = [c for c in cells if c["ok"] and _finite(c["acc"])]
        for a in sorted({c["alpha"] for c in ok}):
            pts = sorted(
                (c["T"], 100 * c["acc"], 100 * c["std"] if _finite(c["std"]) else 0.0)
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
        for ref, style, name in (("t_acc", "--", "teacher"), ("b_acc", ":", "baseline")):
            v = _mean([c[ref] for c in cells])
            if v is not None:
                ax.axhline(100 * v, color="k", ls=style, lw=1, label=f"{name} {100 * v:.2f}%")
        ts = sorted({c["T"] for c in ok})
        if len(ts) > 1 and min(ts) > 0:
            ax.set_xscale("log", base=2)
            ax.set_xticks(ts, [f"{t:g}" for t in ts])
        ax.set_xlabel("temperature T")
        ax.set_ylabel("student test accuracy (%)")
        ax.set_title(_title(cells, label, seeds), fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    _save(fig, path)
    return True


# ----------------------------------------------------------------------------- show
def _fmt_pct_std(m: Any, sd: Any) -> str:
    s = fmt_acc(m)
    return s + (f" ± {100 * sd:.2f}" if _finite(sd) else "")


def summary_table(s: Summary) -> Table:
    """Cells sorted by student accuracy (over seeds when there are several), best highlighted."""
    agg = bool(s.aggregates)
    rows = s.aggregates if agg else s.jobs
    sfx = "_mean" if agg else ""

    def acc(r: dict[str, Any]) -> float:
        v = r.get(f"student_acc{sfx}")
        return v if _finite(v) else -math.inf

    rows = sorted(rows, key=acc, reverse=True)
    t = Table(title=f"kdrun sweep · {s.sweep_dir}", title_style="bold")
    cols = [
        *s.keys,
        "T",
        "alpha",
        "seeds" if agg else "seed",
        "student acc",
        "KD gain",
        "agree",
        "teacher",
        "baseline",
        "time",
        "status",
    ]
    for c in cols:
        t.add_column(c, justify="left" if c in (*s.keys, "status") else "right", no_wrap=True)
    best = next((r for r in rows if _finite(r.get(f"student_acc{sfx}"))), None)
    for r in rows:
        if agg:
            status = f"{r['n']} ok" + (f", {r['n_failed']} failed" if r["n_failed"] else "")
            seed = str(len(r["seeds"]))
        else:
            status, seed = r["status"], str(r["seed"])
        gain = r.get(f"kd_gain{sfx}")
        secs = r.get(f"student_seconds{sfx}")
        t.add_row(
            *[str(r[k]) for k in s.keys],
            f"{r['T']:g}" if _finite(r["T"]) else ("-" if r["T"] is None else str(r["T"])),
            f"{r['alpha']:g}"
            if _finite(r["alpha"])
            else ("-" if r["alpha"] is None else str(r["alpha"])),
            seed,
            _fmt_pct_std(r.get(f"student_acc{sfx}"), r.get("student_acc_std") if agg else None),
            _fmt_pct_std(gain, r.get("kd_gain_std") if agg else None).replace("%", " pt")
            if _finite(gain)
            else "-",
            fmt_acc(r.get(f"agreement{sfx}")),
            fmt_acc(r.get(f"teacher_acc{sfx}")),
            fmt_acc(r.get(f"baseline_acc{sfx}")),
            f"{secs:.1f}s" if _finite(secs) else "-",
            status,
            style="bold green" if r is best else (None if _finite(acc(r)) else "red"),
        )
    counts = Counter(j["status"] for j in s.jobs)
    t.caption = f"{len(s.jobs)} job(s): " + ", ".join(f"{n} {st}" for st, n in counts.items())
    t.caption += " · mean ± std over seeds" if agg else ""
    t.caption_justify = "left"
    return t


def _knob(v: Any) -> str:
    """T or alpha as the method used it: '-' for one it ignores (recorded as null)."""
    return f"{v:.4g}" if _finite(v) else "-"


def show(s: Summary, console: Console) -> None:
    console.print(summary_table(s))
    best = best_by_val(s.jobs)
    if best is not None and len(s.jobs) > 1:
        where = ", ".join(f"{k}={best[k]}" for k in s.keys)
        console.print(
            f"best by validation accuracy: T={_knob(best['T'])}, alpha={_knob(best['alpha'])}"
            f"{', ' + where if where else ''}, seed={best['seed']} (val "
            f"{fmt_acc(best['student_val'])}, test {fmt_acc(best['student_acc'])}; job "
            f"{best['job']})",
            highlight=False,
        )
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


# ----------------------------------------------------------------------------- entry points
def summarize(sweep_dir: str | Path, console: Console | None = None) -> Summary:
    """Build (or rebuild) the summary files of a sweep directory and print its table."""
    sweep_dir = Path(sweep_dir)
    keys, jobs = collect(sweep_dir)
    s = Summary(sweep_dir, keys, jobs, aggregate(jobs, keys))
    doc = {
        "format": SUMMARY_FORMAT,
        "sweep_dir": str(sweep_dir),
        "swept": keys,
        "n_jobs": len(jobs),
        "n_failed": len(s.failed),
        "jobs": jobs,
        "aggregates": s.aggregates,
    }
    atomic_write_text(_csv(keys, jobs, s.aggregates), sweep_dir / "summary.csv")
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
