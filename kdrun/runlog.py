"""kdrun.log holds the whole run, whatever the terminal shows: epoch lines, tables, warnings,
the error of a failed run, the interrupt message and how to resume.

Hydra's job logging writes the root logger to RUN_DIR/kdrun.log and to stdout. What kdrun
shows through rich (progress bars, tables) or prints to stderr (errors) never passes through
logging, and in a terminal the epoch lines live in the bars: each is also written here, to the
log file alone (``kdrun.file`` does not propagate, so nothing reaches the screen twice).
Light (rich and logging only): the CLI writes the job's header with it before torch loads.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.control import Control

FILE_LOGGER = "kdrun.file"


def file_log() -> logging.Logger:
    """The logger that writes to the run's log file only: the file handlers Hydra put on the
    root logger (none when logging is off: then it writes nowhere)."""
    logger = logging.getLogger(FILE_LOGGER)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if logger.handlers != files:  # a new job (a sweep's next one) has a new file
        logger.handlers = files
    return logger


def to_log(text: str, level: int = logging.INFO) -> None:
    """One entry in the run's log file (a multi-line text starts on a line of its own)."""
    file_log().log(level, "%s", "\n" + text if "\n" in text else text)


class LoggedConsole(Console):
    """A rich console whose printed output (tables, notes) also goes to the log file, as
    plain text; the live refreshes of progress bars are not logged (the epoch lines are)."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*objects, **kwargs)
        if objects and not all(isinstance(o, Control) for o in objects):
            plain = Console(
                file=io.StringIO(), width=max(self.width, 120), color_system=None, no_color=True
            )
            kwargs.pop("style", None)
            plain.print(*objects, **kwargs)
            lines = plain.file.getvalue().rstrip("\n").splitlines()
            to_log("\n".join(line.rstrip() for line in lines))


@contextmanager
def warnings_logged() -> Iterator[None]:
    """Python warnings raised during the job are shown as usual and also logged."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        shown(message, category, filename, lineno, file, line)
        to_log(f"{category.__name__}: {message} ({filename}:{lineno})", logging.WARNING)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown
