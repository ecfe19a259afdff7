"""The command line: ``kdrun`` (kdrun.cli.main), Hydra launching (app), subcommands
(commands) and one-line explanations of composition errors (explain)."""

from kdrun.cli.app import SweepInterrupted, precheck, run_hydra
from kdrun.cli.commands import SUBCOMMANDS
from kdrun.cli.explain import LAUNCHER_EXTRAS, explain, missing_launcher
from kdrun.cli.main import main, run

__all__ = [
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
