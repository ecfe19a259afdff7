"""The command line: ``kdrun`` (kdrun.cli.main), Hydra launching (app), subcommands
(commands) and one-line explanations of composition errors (explain).

The names below load on first use (PEP 562): ``kdrun --help`` imports this package, and the
modules behind it import torch, which alone costs seconds."""

from __future__ import annotations

import importlib
from typing import Any

# Light (no torch), and imported here so that `kdrun.cli.main` is the function, not the module.
from kdrun.cli.main import main, run

_WHERE = {
    "LAUNCHER_EXTRAS": "kdrun.cli.explain",
    "SUBCOMMANDS": "kdrun.cli.commands",
    "SweepInterrupted": "kdrun.cli.app",
    "explain": "kdrun.cli.explain",
    "missing_launcher": "kdrun.cli.explain",
    "precheck": "kdrun.cli.app",
    "run_hydra": "kdrun.cli.app",
}

__all__ = [  # the lazy names resolve through __getattr__
    "LAUNCHER_EXTRAS",
    "SUBCOMMANDS",
    "SweepInterrupted",
    "explain",
    "main",
    "missing_launcher",
    "precheck",
    "run",
    "run_hydra",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'kdrun.cli' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
