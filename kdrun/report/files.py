"""Reading a run's files back and the console they are shown on (jobs and sweep summaries)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from kdrun.runlog import LoggedConsole


def make_console() -> Console:
    """A console that does not squeeze tables to 80 columns when output is piped to a file."""
    c = LoggedConsole()  # what it prints also goes to kdrun.log
    return c if c.is_terminal else LoggedConsole(width=max(c.width, 120))


def read_metrics(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
