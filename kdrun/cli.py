"""The single ``kdrun`` entry point: Hydra jobs, plus a few subcommands.

kdrun [overrides...]           one job (teacher, baseline, distilled student)
kdrun -m [sweep overrides...]  a sweep; ends with one summary table and plot
kdrun <subcommand> ...         see SUBCOMMANDS
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from kdrun.config import config_dir, register_configs

register_configs()

# Exit status of the whole command: the worst of its jobs (Hydra returns none of its own).
_EXIT = {"code": 0}

SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {}


def subcommand(name: str):
    def deco(fn: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
        SUBCOMMANDS[name] = fn
        return fn

    return deco


def set_exit_code(code: int) -> None:
    _EXIT["code"] = max(_EXIT["code"], code)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def _hydra_job(cfg: DictConfig) -> int:
    from pathlib import Path

    from kdrun.job import run_job

    hc = HydraConfig.get()
    code = run_job(cfg, Path(hc.runtime.output_dir), multirun=hc.mode == RunMode.MULTIRUN)
    set_exit_code(code)
    return code


# Optional launchers: the Hydra plugin each needs and the kdrun extra that installs it.
LAUNCHER_EXTRAS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
}


def missing_launcher(override: str) -> str | None:
    """The one-line fix for ``hydra/launcher=NAME`` when NAME's plugin is not installed."""
    import importlib.util

    key, _, name = override.partition("=")
    if key.lstrip("+") != "hydra/launcher" or name not in LAUNCHER_EXTRAS:
        return None
    module, extra = LAUNCHER_EXTRAS[name]
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:
        found = False
    return None if found else f"hydra/launcher={name} needs an extra: pip install 'kdrun[{extra}]'"


def _one_line(e: BaseException) -> str:
    """Hydra/OmegaConf composition errors span several lines; squeeze them into one."""
    parts = []
    while e is not None:
        for line in str(e).splitlines():
            line = line.strip()
            if line and not line.startswith(("full_key", "object_type", "reference_type",
                                             "Set the environment")):  # fmt: skip
                parts.append(line.rstrip("."))
        e = e.__cause__
    seen: list[str] = []
    for p in parts:
        if p not in seen:
            seen.append(p)
    return "; ".join(seen)


def precheck(args: list[str]) -> str | None:
    """Compose the config once per override value, so a typo fails fast with one line.

    Only composition is checked here (unknown keys/options, wrong types); semantic checks
    (T > 0, ...) run inside each job, so one bad cell of a sweep fails only that job.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in args if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        return _one_line(e)
    fixed, sweeps = [], []
    for o, text in zip(parsed, overrides, strict=True):
        if o.is_hydra_override():
            if (hint := missing_launcher(text)) is not None:
                return hint
            continue
        if o.is_sweep_override():
            key = text.split("=", 1)[0]
            sweeps.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            fixed.append(text)
    candidates = [fixed + [v[0] for v in sweeps]]
    for i, values in enumerate(sweeps):
        for v in values[1:]:
            candidates.append(fixed + [s[0] if j != i else v for j, s in enumerate(sweeps)])
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            for ov in candidates:
                try:
                    compose(config_name="config", overrides=ov)
                except Exception as e:
                    return _one_line(e)
    finally:
        GlobalHydra.instance().clear()
    return None


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        sys.exit(SUBCOMMANDS[args[0]](args[1:]))
    passthrough = any(a.startswith("-") and a not in ("-m", "--multirun") for a in args)
    if not passthrough and not os.environ.get("HYDRA_FULL_ERROR"):
        err = precheck(args)
        if err is not None:
            print(f"kdrun: error: {err}", file=sys.stderr)
            sys.exit(2)
    sys.argv = [sys.argv[0], *args]
    _EXIT["code"] = 0
    try:
        _hydra_job()
    except KeyboardInterrupt:  # a second Ctrl-C: stop now, still without a traceback
        print("kdrun: interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    sys.exit(_EXIT["code"])


# Subcommands register themselves on import.
from kdrun import commands  # noqa: E402,F401
