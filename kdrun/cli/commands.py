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


# Hydra overrides that pin where a run lives; `resume` sets the directory itself.
_PLACEMENT = ("hydra.run.dir=", "hydra.sweep.dir=", "hydra.mode=", "hydra.job.")


@subcommand("resume")
def resume(args: list[str]) -> int:
    """kdrun resume DIR [overrides...]: finish a run or sweep directory with its own overrides.

    Reads DIR/.hydra (a run) or DIR/multirun.yaml (a sweep), runs again from the original
    working directory (relative store_dir/data paths keep their meaning) in DIR itself:
    completed jobs are skipped, unfinished ones continue from their checkpoints.
    """
    import os
    import sys
    from pathlib import Path

    from omegaconf import OmegaConf

    from kdrun.cli import run

    if not args or args[0].startswith("-"):
        print("usage: kdrun resume RUN_OR_SWEEP_DIR [overrides...]", file=sys.stderr)
        return 2
    from kdrun.job import read_metrics

    d = Path(args[0]).expanduser().resolve()
    recorded = (read_metrics(d / "metrics.json") or {}).get("command")
    if (d / "multirun.yaml").is_file():
        h = OmegaConf.load(d / "multirun.yaml").hydra
        task, hydra_ov, cwd = ["-m", *h.overrides.task], h.overrides.hydra, h.runtime.cwd
        where = f"hydra.sweep.dir={d}"
    elif recorded:  # what the run itself recorded: .hydra/ may have been rewritten since
        task, hydra_ov, cwd = recorded["overrides"], recorded["hydra_overrides"], recorded["cwd"]
        where = f"hydra.run.dir={d}"
    elif (d / ".hydra" / "hydra.yaml").is_file():
        h = OmegaConf.load(d / ".hydra" / "hydra.yaml").hydra
        task, hydra_ov, cwd = h.overrides.task, h.overrides.hydra, h.runtime.cwd
        where = f"hydra.run.dir={d}"
    else:
        print(f"kdrun: error: {d} is not a kdrun run or sweep directory (no .hydra/hydra.yaml "
              f"or multirun.yaml); give the directory a run printed", file=sys.stderr)  # fmt: skip
        return 2
    argv = [*task, *(o for o in hydra_ov if not o.startswith(_PLACEMENT)), where, *args[1:]]
    if cwd and Path(cwd).is_dir():
        os.chdir(cwd)
    return run(argv)


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


from kdrun import soft_targets  # noqa: E402,F401  (registers softmax, dark-knowledge)
