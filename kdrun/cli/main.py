"""The single ``kdrun`` entry point: Hydra jobs, plus a few subcommands.

kdrun [overrides...]           one job (teacher, baseline, distilled student)
kdrun -m [sweep overrides...]  a sweep; ends with one summary table and plot
kdrun <subcommand> ...         see SUBCOMMANDS
"""

from __future__ import annotations

import os
import re
import signal
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
_SWEEP: dict[str, str | None] = {"dir": None}


class SweepInterrupted(KeyboardInterrupt):
    """Raised after a job of a sweep was stopped: a BaseException, so that Hydra's launcher
    (which records ordinary exceptions and goes on) does not start the next job."""


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
    _EXIT["debug"] = bool(cfg.get("debug"))  # debug=true: run_job re-raises; keep the traceback
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun:
        _SWEEP["dir"] = os.path.abspath(hc.sweep.dir)
    # The command that made this job, kept in its metrics.json: `kdrun resume` uses it (Hydra
    # rewrites .hydra/ whenever any command runs in the directory, even one that is refused).
    command = {"overrides": list(hc.overrides.task), "hydra_overrides": list(hc.overrides.hydra),
               "cwd": hc.runtime.cwd}  # fmt: skip
    code = run_job(cfg, Path(hc.runtime.output_dir), multirun=multirun, command=command)
    set_exit_code(code)
    if multirun and code == 130:
        raise SweepInterrupted
    return code


_GROUP_MISSING = re.compile(r"Could not find '([\w-]+)/([^']+)'")
_KEY_MISSING = re.compile(r"Could not override '([^']+)'")
_BAD_VALUE = re.compile(
    r"Error merging override ([^=\s]+)=(.*?); Value '.*' of type '\w+' could not be converted to "
    r"(\w+)"
)

_NOT_A_LIST = re.compile(
    r"Error merging override ([^=\s]+)=(.*?); Invalid value assigned: \w+ is not a ListConfig"
)


def _schema_keys() -> list[str]:
    from omegaconf import OmegaConf

    from kdrun.config import KdrunConfig

    out: list[str] = []

    def walk(node: dict, prefix: str) -> None:
        for k, v in node.items():
            out.append(prefix + k)
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")

    walk(OmegaConf.to_container(OmegaConf.structured(KdrunConfig)), "")
    return out


def explain(e: BaseException) -> str:
    """One line naming the problem and the fix, for the composition errors people hit most."""
    import difflib

    text = _one_line(e)
    m = _GROUP_MISSING.search(text)
    if m:
        group, name = m.groups()
        choices, listing = [], False
        for line in str(e).splitlines():  # Hydra lists the options one per indented line
            if line.startswith("Available options in"):
                listing = True
            elif listing and line[:1] in ("\t", " ") and line.strip():
                choices.append(line.strip())
            elif listing:
                break
        hint = f"; choose one of: {', '.join(choices)}" if choices else ""
        return f"unknown {group} '{name}' (no conf/{group}/{name}.yaml){hint}"
    m = _KEY_MISSING.search(text)
    if m and "not in" in text:
        key = m.group(1).lstrip("+~")
        close = difflib.get_close_matches(key, _schema_keys(), n=1, cutoff=0.75)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"unknown config key '{key}'; {hint}`kdrun --cfg job` lists every key"
    m = _NOT_A_LIST.search(text)
    if m:
        key, value = m.groups()
        return f"{key}={value}: '{value}' is not a list; write it as {key}=[3,5]"
    m = _BAD_VALUE.search(text)
    if m:
        key, value, typ = m.groups()
        return f"{key}={value}: '{value}' is not a valid {typ.lower()}; give {key} a {typ.lower()}"
    return text


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
                                             "Set the environment", "Config search path",
                                             "provider=")):  # fmt: skip
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
        return explain(e)
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
                    return explain(e)
    finally:
        GlobalHydra.instance().clear()
    return None


def run(args: list[str]) -> int:
    """Run kdrun with these arguments; return the exit status of the whole command."""
    if args and args[0] in SUBCOMMANDS:
        return SUBCOMMANDS[args[0]](args[1:])
    user_full_error = os.environ.get("HYDRA_FULL_ERROR")
    passthrough = any(a.startswith("-") and a not in ("-m", "--multirun") for a in args)
    if not passthrough and not user_full_error:
        err = precheck(args)
        if err is not None:
            print(f"kdrun: error: {err}", file=sys.stderr)
            return 2
    sys.argv = [sys.argv[0], *args]
    _EXIT["code"], _EXIT["debug"] = 0, 0
    _SWEEP["dir"] = None
    # Hydra prints a traceback for errors outside the job (an output directory it cannot
    # create, a config it cannot compose) unless HYDRA_FULL_ERROR is set, in which case it
    # re-raises them: set it, and turn them into one line here.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    # SIGTERM (Slurm, kill) outside a job's training loop acts like Ctrl-C instead of killing
    # the process mid-write; inside the loop, job.StopFlag turns both into a clean stop.
    old_term = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        _hydra_job()
    except KeyboardInterrupt:  # SweepInterrupted, or Ctrl-C outside a job
        where = f"finish it with: kdrun resume {_quote(_SWEEP['dir'])}" if _SWEEP["dir"] else ""
        print(f"kdrun: interrupted; results written so far are intact{'; ' if where else ''}"
              f"{where}", file=sys.stderr)  # fmt: skip
        return 130
    except Exception as e:
        if user_full_error or _EXIT.get("debug"):
            raise
        from kdrun.errors import find_os_error, os_error_message

        os_err = find_os_error(e)
        msg = os_error_message(os_err) if os_err is not None else None
        print(f"kdrun: error: {msg or explain(e)}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if user_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    if _SWEEP["dir"] and _EXIT["code"] != 0:
        print(
            f"kdrun: some jobs of the sweep did not complete (their metrics.json says why); "
            f"`kdrun resume {_quote(_SWEEP['dir'])}` reruns only those",
            file=sys.stderr,
        )
    return _EXIT["code"]


def _quote(path: str | None) -> str:
    import shlex

    return shlex.quote(str(path))


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(list(sys.argv[1:] if argv is None else argv)))


# Subcommands register themselves on import.
from kdrun import commands  # noqa: E402,F401
