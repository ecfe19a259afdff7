"""What a person sees: progress bars per stage, the final table, history.csv."""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kdrun.store import atomic_write_text

log = logging.getLogger("kdrun")


class Reporter:
    """Rich progress bars in an interactive terminal; one log line per epoch otherwise."""

    def __init__(self, console: Console, progress: bool):
        self.console = console
        self.progress = progress

    @contextmanager
    def stage(self, name: str, total_steps: int) -> Iterator[dict[str, Any]]:
        def log_epoch(row: dict[str, Any]) -> None:
            log.info(
                "%s epoch %d: loss %.4f train_acc %.4f val_acc %.4f (%.1fs)",
                name,
                row["epoch"],
                row["loss"],
                row["train_acc"],
                row["val_acc"],
                row["seconds"],
            )

        if not self.progress:
            yield {"on_epoch": log_epoch}
            return
        bar = Progress(
            TextColumn("[bold]{task.description:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=False,
        )
        with bar:
            task = bar.add_task(name, total=total_steps, info="")

            def on_epoch(row: dict[str, Any]) -> None:
                info = f"epoch {row['epoch']} loss {row['loss']:.3f} val {row['val_acc']:.4f}"
                bar.update(task, info=info)
                logging.getLogger("kdrun.file").debug("%s", info)

            yield {"on_epoch": on_epoch, "on_step": lambda: bar.advance(task)}


def fmt_acc(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.2f}%"


def results_table(m: dict[str, Any]) -> Table:
    title = (
        f"kdrun · {m['dataset']} · method={m['method']} · T={m['T']:g} · alpha={m['alpha']:g}"
        f" · seed={m['seed']}"
    )
    t = Table(title=title, title_style="bold")
    for col in (
        "stage",
        "model",
        "params",
        "test acc",
        "last ep.",
        "val acc",
        "agree",
        "time",
        "source",
    ):
        t.add_column(
            col, justify="left" if col in ("stage", "model", "source") else "right", no_wrap=True
        )
    # Models a method trains besides the student (assistants, generations, members, peers).
    extra = m.get("extra_models") or {}
    for stage in ("teacher", *extra, "baseline", "student"):
        r = m.get(stage) if stage not in extra else extra[stage]
        if not r:
            continue
        src = "store" if r.get("from_cache") else "trained"
        if stage == "student":
            src = (
                "trained"
                if not r.get("resumed_from_epoch")
                else f"resumed@{r['resumed_from_epoch']}"
            )
        t.add_row(
            {"student": "distilled"}.get(stage, stage),
            r["model"],
            f"{r['params']:,}",
            fmt_acc(r["test_acc"]),
            fmt_acc(r.get("last_test_acc")),
            fmt_acc(r.get("val_acc")),
            fmt_acc(r.get("agreement")) if stage in ("baseline", "student") else "",
            f"{r['train_seconds']:.1f}s",
            src,
        )
    gain = m.get("kd_gain")
    if gain is not None:
        style = "bold green" if gain > 0 else ("bold red" if gain < 0 else "bold")
        t.caption = f"[{style}]KD gain (distilled − baseline test acc): {100 * gain:+.2f} points[/]"
        t.caption_justify = "left"
    return t


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
