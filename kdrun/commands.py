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


from kdrun import soft_targets  # noqa: E402,F401  (registers softmax, dark-knowledge)
