"""Subcommands of the single ``kdrun`` entry point (besides Hydra jobs)."""

from __future__ import annotations

from rich.console import Console

from kdrun.cli import subcommand


@subcommand("list")
def list_registries(args: list[str]) -> int:
    """kdrun list: the registered data sets, models and methods."""
    from kdrun.data import DATASETS
    from kdrun.methods import METHODS
    from kdrun.models import MODELS

    c = Console()
    c.print("[bold]datasets:[/]", ", ".join(sorted(DATASETS)))
    c.print("[bold]models:[/]  ", ", ".join(sorted(MODELS)))
    c.print("[bold]methods:[/] ", ", ".join(sorted(METHODS)))
    return 0


@subcommand("summarize")
def summarize_sweep(args: list[str]) -> int:
    """kdrun summarize DIR: rebuild the summary table, files and plots of a sweep directory."""
    import sys

    from kdrun.errors import KdrunError
    from kdrun.sweep import summarize

    if len(args) != 1 or args[0].startswith("-"):
        print("usage: kdrun summarize DIR   (a sweep directory, e.g. "
              "outputs/multirun/<date>/<time>)", file=sys.stderr)  # fmt: skip
        return 0 if args and args[0] in ("-h", "--help") else 2
    try:
        s = summarize(args[0])
    except KdrunError as e:
        print(f"kdrun: error: {e}", file=sys.stderr)
        return e.exit_code
    return s.exit_code
