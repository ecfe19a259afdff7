"""The single ``kdrun`` entry point: Hydra jobs, plus a few subcommands.

kdrun [overrides...]           one job (teacher, baseline, distilled student)
kdrun -m [sweep overrides...]  a sweep; ends with one summary table and plot
kdrun <subcommand> ...         see kdrun.cli.commands.SUBCOMMANDS
"""

from __future__ import annotations

import sys

from kdrun.cli.app import run_hydra
from kdrun.cli.commands import SUBCOMMANDS
from kdrun.cli.plugins import load_plugins
from kdrun.errors import ConfigError


def run(args: list[str]) -> int:
    """Run kdrun with these arguments; return the exit status of the whole command."""
    try:
        load_plugins()  # before anything looks a name up: `kdrun list` shows plugins too
    except ConfigError as e:
        print(f"kdrun: error: {e}", file=sys.stderr)
        return 2
    if args and args[0] in SUBCOMMANDS:
        return SUBCOMMANDS[args[0]](args[1:])
    return run_hydra(args)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(list(sys.argv[1:] if argv is None else argv)))
