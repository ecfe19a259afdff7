"""What a person sees: progress bars per stage, the final table, history.csv."""

from __future__ import annotations

import csv
import io
import logging
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from kdrun.report.evidence import evidence_text
from kdrun.runlog import to_log
from kdrun.store import atomic_write_text

log = logging.getLogger("kdrun")

# Significant digits of the numbers stored in metrics.json: accuracies over <= 10^6 test images
# are exact at 6, and float32 noise (0.925000011920929) is gone.
STORED_DIGITS = 6


def round_floats(value: Any, digits: int = STORED_DIGITS) -> Any:
    """``value`` with every float inside (dicts, lists, tuples) rounded to ``digits``
    significant digits; non-finite floats, ints, bools and strings unchanged."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: round_floats(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [round_floats(v, digits) for v in value]
    return value


def _val_key(row: dict[str, Any]) -> str:
    """The row's validation metric (val_acc for classification, val_bpb for language)."""
    return next((k for k in row if k.startswith("val_")), "val_acc")


@dataclass
class _Side:
    """A stage trained in another process (the baseline aside): its bar's state, shown in
    whichever bar is live when its rows arrive."""

    epochs: int
    done: int = 0
    info: str = ""
    bar: Progress | None = None  # the live bar its task is in
    task: Any = None


def _new_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<9}"),
        BarColumn(),
        TextColumn("{task.fields[where]}"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )


class Reporter:
    """Rich progress bars in an interactive terminal; one log line per epoch otherwise."""

    def __init__(
        self,
        console: Console,
        progress: bool,
        on_row: Callable[[str, dict[str, Any]], None] | None = None,
    ):
        """``on_row(stage, row)``: also called with every epoch's row (experiment trackers)."""
        self.console = console
        self.progress = progress
        self.on_row = on_row
        self._live: Progress | None = None  # the bar of the stage now training
        self._sides: dict[str, _Side] = {}
        self._lock = threading.Lock()  # side rows arrive on another thread

    @contextmanager
    def stage(self, name: str, total_steps: int) -> Iterator[dict[str, Any]]:
        def log_epoch(row: dict[str, Any]) -> None:
            if self.on_row is not None:
                self.on_row(name, row)
            log.info("%s", epoch_line(name, row), extra={"epoch_row": True})

        if not self.progress:
            yield {"on_epoch": log_epoch}
            return
        bar = _new_bar(self.console)
        with bar, self._showing(bar):
            yield _BarHooks(bar, name, total_steps, self.on_row).hooks()

    @contextmanager
    def _showing(self, bar: Progress) -> Iterator[None]:
        """``bar`` is the live one: the side stages still training get a task in it."""
        with self._lock:
            self._live = bar
            for name, side in self._sides.items():
                if 0 < side.done < side.epochs:  # (the first row adds a task itself)
                    self._show(name, side)
        try:
            yield
        finally:
            with self._lock:
                self._live = None

    def side_stage(self, name: str, epochs: int) -> None:
        """Stage ``name`` (``epochs`` epochs) trains in another process; its rows come
        through ``side_row``, from any thread."""
        with self._lock:
            self._sides[name] = _Side(epochs)

    def side_row(self, name: str, row: dict[str, Any]) -> None:
        """One epoch of a side stage: its line (piped), or its task in the live bar (bars;
        between bars it waits for the next one, or for ``side_wait``)."""
        line = epoch_line(name, row)
        if not self.progress:
            log.info("%s", line)
            return
        to_log(line)  # the bar shows it; the log file keeps it
        with self._lock:
            side = self._sides.setdefault(name, _Side(int(row["epoch"])))
            key = _val_key(row)
            side.done, side.info = int(row["epoch"]), f"loss {row['loss']:.3f} {key} {row[key]:.4f}"
            self._show(name, side)

    def _show(self, name: str, side: _Side) -> None:
        """(Under the lock.) The side stage's task in the live bar, added or updated."""
        bar = self._live
        if bar is None:
            return
        where = f"epoch {min(side.done + 1, side.epochs)}/{side.epochs}"
        if side.bar is not bar:
            side.bar = bar
            side.task = bar.add_task(name, total=side.epochs, info=side.info, where=where)
        bar.update(side.task, completed=side.done, info=side.info, where=where)

    @contextmanager
    def side_wait(self, name: str) -> Iterator[None]:
        """The job waits for side stage ``name``: a bar of its own while it is unfinished."""
        side = self._sides.get(name)
        if not self.progress or side is None or side.done >= side.epochs:
            yield
            return
        bar = _new_bar(self.console)
        with bar, self._showing(bar):
            yield


class _BarHooks:
    """One stage's bar: epoch i/N, the ETA, the last epoch's loss and validation number."""

    def __init__(self, bar: Progress, stage: str, total_steps: int, on_row) -> None:
        self.bar, self.stage, self.total, self.on_row = bar, stage, total_steps, on_row
        self.task = bar.add_task(stage, total=total_steps, info="", where="")
        self.epochs = 0  # set by on_start

    def hooks(self) -> dict[str, Any]:
        return {"on_epoch": self.on_epoch, "on_step": self.on_step, "on_start": self.on_start}

    def on_step(self) -> None:
        self.bar.advance(self.task)

    def _at(self, epochs_done: int) -> int:
        return self.total * epochs_done // max(self.epochs, 1)

    def _where(self, epochs_done: int) -> str:
        return f"epoch {min(epochs_done + 1, self.epochs)}/{self.epochs}"

    def on_start(self, first: int, epochs: int) -> None:
        """A resumed stage's bar starts where the stage left off, not at 0 (reset: the ETA
        is estimated from this session's steps alone)."""
        self.epochs = epochs
        where = self._where(first)  # reset replaces every field
        self.bar.reset(self.task, completed=self._at(first), where=where, info="")

    def on_epoch(self, row: dict[str, Any]) -> None:
        if self.on_row is not None:
            self.on_row(self.stage, row)
        done, key = int(row["epoch"]), _val_key(row)
        info = f"loss {row['loss']:.3f} {key} {row[key]:.4f}"
        if self.epochs:  # re-synced at each epoch end: a resume may start mid-epoch
            self.bar.update(self.task, completed=self._at(done), info=info, where=self._where(done))
        else:
            self.bar.update(self.task, info=info, where=f"epoch {done}")
        to_log(epoch_line(self.stage, row))  # the bar shows it; the log file keeps it


def epoch_line(stage: str, row: dict[str, Any]) -> str:
    """The log's line for one epoch of a stage."""
    key = _val_key(row)
    return (
        f"{stage} epoch {row['epoch']}: loss {row['loss']:.4f} train_acc {row['train_acc']:.4f} "
        f"{key} {row[key]:.4f} ({row['seconds']:.1f}s)"
    )


def fmt_acc(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.2f}%"


def knob_text(m: dict[str, Any]) -> str:
    """'T=4 · alpha=0.9' as the method used them (metrics.json ``effective``); a knob the
    method does not use is left out, a learned T says so."""
    eff = m.get("effective") or {"T": m.get("T"), "alpha": m.get("alpha")}
    parts = []
    if eff.get("T") is not None:
        parts.append(f"T={eff['T']:g}")
    elif eff.get("T_learned") is not None:
        parts.append(f"T learned ({eff['T_learned']:.3g})")
    if eff.get("alpha") is not None:
        parts.append(f"alpha={eff['alpha']:g}")
    return " · ".join(parts)


def fmt_value(x: Any, fmt: str) -> str:
    """A table cell: pct (0.1234 -> 12.34%), num (4 decimals) or num2 (2 decimals)."""
    if fmt == "pct":
        return fmt_acc(x)
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.2f}" if fmt == "num2" else f"{x:.4f}"


# (header, metrics key, format) per column after stage/model/params: classification's.
DEFAULT_COLUMNS = (
    ("test acc", "test_acc", "pct"),
    ("last ep.", "last_test_acc", "pct"),
    ("val acc", "val_acc", "pct"),
    ("agree", "agreement", "pct"),
)


def _acc_gain(gain: float) -> str:
    return f"KD gain (distilled − baseline test acc): {100 * gain:+.2f} points"


def _source(stage: str, r: dict[str, Any]) -> str:
    if stage != "student":
        return r.get("source") or ("store" if r.get("from_cache") else "trained")
    return "trained" if not r.get("resumed_from_epoch") else f"resumed@{r['resumed_from_epoch']}"


def results_table(
    m: dict[str, Any],
    columns: Sequence[Any] = DEFAULT_COLUMNS,
    gain_text: Callable[[float], str] = _acc_gain,
) -> Table:
    """The run table. ``columns``: (header, key, fmt) triples or objects with those fields
    (the task's); ``gain_text`` words the kd_gain caption."""
    knobs = knob_text(m)
    title = (
        f"kdrun · {m['dataset']} · method={m['method']}{' · ' + knobs if knobs else ''}"
        f" · seed={m['seed']}"
    )
    cols = [tuple(c) if isinstance(c, tuple) else (c.header, c.key, c.fmt) for c in columns]
    t = Table(title=title, title_style="bold")
    for col in ("stage", "model", "params", *(c[0] for c in cols), "time", "source"):
        t.add_column(
            col, justify="left" if col in ("stage", "model", "source") else "right", no_wrap=True
        )
    # Models a method trains besides the student (assistants, generations, members, peers).
    extra = m.get("extra_models") or {}
    labels = {"student": "distilled", **(m.get("stage_labels") or {})}
    for stage in ("teacher", *extra, "baseline", "student"):
        r = m.get(stage) if stage not in extra else extra[stage]
        if not r:
            continue
        t.add_row(
            labels.get(stage, stage),
            r["model"],
            f"{r['params']:,}",
            *(fmt_value(r.get(key), fmt) if key in r else "" for _, key, fmt in cols),
            f"{r['train_seconds']:.1f}s",
            _source(stage, r),
        )
    gain = m.get("kd_gain")
    if gain is not None:
        t.caption = gain_caption(gain, m.get("evidence"), gain_text)
        t.caption_justify = "left"
    return t


def gain_caption(
    gain: float, evidence: dict[str, Any] | None, gain_text: Callable[[float], str]
) -> str:
    """The run table's last line: the KD gain, and with the paired evidence its interval,
    p-value and verdict, green only when KD significantly helps (red when it hurts)."""
    if not evidence:
        style = "bold green" if gain > 0 else ("bold red" if gain < 0 else "bold")
        return f"[{style}]{gain_text(gain)}[/]"
    style = {"KD helps": "bold green", "KD hurts": "bold red"}.get(evidence["verdict"], "bold")
    head = gain_text(gain).rsplit(":", 1)[0]  # 'KD gain (distilled − baseline test acc)'
    return f"[{style}]{head}: {evidence_text(evidence)}[/]"


HISTORY_COLUMNS = [
    "stage",
    "epoch",
    "loss",
    "loss_soft",
    "loss_hard",
    "train_acc",
    "val_acc",
    "lr",
    "seconds",
]


def write_history(rows: list[dict[str, Any]], path: Path) -> None:
    cols = list(HISTORY_COLUMNS)
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    atomic_write_text(buf.getvalue(), path)
