"""The single ``kdrun`` entry point: Hydra jobs, plus a few subcommands.

kdrun [overrides...]           one job (teacher, baseline, distilled student)
kdrun -m [sweep overrides...]  a sweep; ends with one summary table and plot
kdrun <subcommand> ...         see kdrun.cli.overview.COMMANDS

This module imports neither torch nor Hydra: ``--help``, ``--version``, ``list`` and a typo's
error answer from conf/ alone, and the modules that import torch load only for what needs them
(the subcommands' module, Hydra's launch, the plugins).
"""

from __future__ import annotations

import difflib
import importlib
import sys
from importlib.metadata import entry_points

from kdrun.catalog import version_text
from kdrun.cli.overview import COMMANDS, help_text, list_text
from kdrun.errors import ConfigError

PLUGIN_GROUPS = {"kdrun.methods": "method", "kdrun.models": "model", "kdrun.datasets": "dataset"}
# Every group kdrun.cli.plugins loads (named here: importing it imports torch); `kdrun list`
# shows the names of PLUGIN_GROUPS only.
ALL_PLUGIN_GROUPS = (
    *PLUGIN_GROUPS,
    "kdrun.lm_methods",
    "kdrun.tasks",
    "kdrun.kinds",
    "kdrun.analyses",
)
# Hydra's own command-line flags (hydra/_internal/utils.py get_args_parser); anything else
# starting with '-' is a mistake, answered in one line instead of Hydra's usage paragraph.
HYDRA_FLAGS = {
    "--help",
    "-h",
    "--hydra-help",
    "--version",
    "--cfg",
    "-c",
    "--resolve",
    "--package",
    "-p",
    "--run",
    "-r",
    "--multirun",
    "-m",
    "--shell-completion",
    "-sc",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
    "--info",
    "-i",
}


def _plugins() -> dict[str, list[str]] | None:
    """Load installed plugins (None if there are none, the usual case: no torch needed);
    the names they added, by kind."""
    groups = {g: list(entry_points(group=g)) for g in ALL_PLUGIN_GROUPS}
    if not any(groups.values()):
        return None
    plugins = importlib.import_module("kdrun.cli.plugins")
    plugins.load_plugins()
    return {kind: sorted(plugins.GROUPS[g][1]) for g, kind in PLUGIN_GROUPS.items()}


def _not_a_command(word: str) -> str:
    close = difflib.get_close_matches(word, list(COMMANDS), n=1, cutoff=0.6)
    hint = f"did you mean 'kdrun {close[0]}'? " if close else ""
    return (
        f"'{word}' is neither a command nor a key=value override; {hint}"
        f"`kdrun --help` lists the commands and experiments"
    )


def _bad_flag(args: list[str]) -> str | None:
    """One line for an option Hydra does not take (``--epochs 5``): kdrun takes overrides."""
    for i, a in enumerate(args):
        flag = a.split("=", 1)[0]
        if a.startswith("-") and flag not in HYDRA_FLAGS:
            value = a.split("=", 1)[1] if "=" in a else None
            if value is None and i + 1 < len(args) and "=" not in args[i + 1]:
                value = args[i + 1]
            explain = importlib.import_module("kdrun.cli.explain")
            return explain.unknown_flag(flag, value)
    return None


def run(args: list[str]) -> int:
    """Run kdrun with these arguments; return the exit status of the whole command."""
    if args in (["--help"], ["-h"]) or args[:1] == ["help"]:
        print(help_text())
        return 0
    if args in (["--version"], ["-V"]):
        print(version_text())
        return 0
    try:
        # before anything looks a name up: `kdrun list` shows plugins too
        extra = _plugins()
    except ConfigError as e:
        print(f"kdrun: error: {e}", file=sys.stderr)
        return 2
    first = args[0] if args else ""
    if first == "list":
        print(list_text(extra))
        return 0
    if first in COMMANDS:
        commands = importlib.import_module("kdrun.cli.commands")
        return commands.SUBCOMMANDS[first](args[1:])
    err = _bad_flag(args)
    if err is None and first and not first.startswith(("-", "+", "~")) and "=" not in first:
        err = _not_a_command(first)
    if err is not None:
        print(f"kdrun: error: {err}", file=sys.stderr)
        return 2
    return importlib.import_module("kdrun.cli.app").run_hydra(args)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(list(sys.argv[1:] if argv is None else argv)))
