"""Hydra's side of the entry point: compose-check the overrides, launch the job(s), one-line
errors, and the exit status of the whole command."""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import signal
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig

from kdrun.cli.explain import explain, missing_key, missing_launcher
from kdrun.cli.overview import job_header
from kdrun.config import config_dir, register_configs
from kdrun.errors import EXIT, ConfigError, KdrunError, find_os_error, os_error_message
from kdrun.runlog import to_log

register_configs()


def _lazy(module: str) -> Any:
    """A module that imports torch, loaded when a job needs it: `kdrun --help` and a typo's
    one-line error must not wait seconds for torch (tests/test_startup.py checks)."""
    return importlib.import_module(module)


# What the last Hydra launch left behind for the CLI: a sweep's directory, the debug flag.
_LAUNCH: dict[str, str | bool | None] = {"sweep_dir": None, "debug": False}


class SweepInterrupted(KeyboardInterrupt):
    """Raised after a job of a sweep was stopped: a BaseException, so that Hydra's launcher
    (which records ordinary exceptions and goes on) does not start the next job."""


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def _hydra_job(cfg: DictConfig) -> int:
    hc = HydraConfig.get()
    if os.environ.get("RANK", "0") == "0":  # one header for a job on several processes
        header = job_header(cfg, hc.runtime.output_dir)
        print(header, flush=True)  # at once: the job's modules (torch) take seconds to load
        to_log(header)
    # a no-op where `kdrun` loaded them; a launcher's worker process needs it
    _lazy("kdrun.cli.plugins").load_plugins()
    _LAUNCH["debug"] = bool(cfg.get("debug"))  # debug=true: run_job re-raises; keep traceback
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun:
        _LAUNCH["sweep_dir"] = os.path.abspath(hc.sweep.dir)
    # The command that made this job, kept in its metrics.json: `kdrun resume` uses it (Hydra
    # rewrites .hydra/ whenever any command runs in the directory, even one that is refused).
    command = {
        "overrides": list(hc.overrides.task),
        "hydra_overrides": list(hc.overrides.hydra),
        "cwd": hc.runtime.cwd,
    }
    job = _lazy("kdrun.experiments.job")
    code = job.run_job(cfg, Path(hc.runtime.output_dir), multirun=multirun, command=command)
    EXIT.raise_to(code)
    if multirun and code == 130:
        raise SweepInterrupted
    if "optuna" in str(hc.sweeper.get("_target_", "")):  # a search: the sweeper wants a number
        return job.search_objective(Path(hc.runtime.output_dir), cfg.optimized_metric)
    return code


def _not_a_sweep(text: str) -> str:
    """``alpha=0,9`` without -m: a decimal comma, or a sweep that forgot -m."""
    key, _, value = text.partition("=")
    meant = ""
    if re.fullmatch(r"-?\d+,\d+", value):
        meant = f"did you mean {key}={value.replace(',', '.')}? "
    return (
        f"{text}: a comma separates the values of a sweep, and without -m this is no sweep; "
        f"{meant}to sweep: kdrun -m {text}; a list: {key}=[{value}]"
    )


def _candidates(overrides: list[str], multirun: bool = True) -> list[list[str]] | str:
    """One override list per sweep value (the first value of the others), or an error line."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        return explain(e)
    fixed, sweeps = [], []
    for o, text in zip(parsed, overrides, strict=True):
        if (hint := missing_launcher(text)) is not None:
            return hint
        if o.is_hydra_override():
            continue
        if o.is_sweep_override():
            if not multirun:
                return _not_a_sweep(text)
            key = text.split("=", 1)[0]
            sweeps.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            fixed.append(text)
    out = [fixed + [v[0] for v in sweeps]]
    for i, values in enumerate(sweeps):
        for v in values[1:]:
            out.append(fixed + [s[0] if j != i else v for j, s in enumerate(sweeps)])
    return out


def method_option_error(cfg: DictConfig) -> str | None:
    """``method.*`` checked against the chosen method's typed options (unknown keys get a
    did-you-mean, like top-level keys); an unknown method is left to validate()."""
    method = _lazy("kdrun.methods").METHODS.get(cfg.method.get("name"))
    if method is None:
        return None
    try:
        method.options(cfg.method)
    except ConfigError as e:
        return str(e)
    return None


def _method_key_error(e: BaseException, overrides: list[str]) -> str | None:
    """``method.<typo>=...``: the chosen method's options, with the closest one."""
    key = missing_key(e)
    if key is None or not key.startswith("method."):
        return None
    rest = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != key]
    try:
        name = compose(config_name="config", overrides=rest).method.get("name")
    except Exception:  # another error as well: explain() reports the first one
        return None
    methods = _lazy("kdrun.methods")
    if name not in methods.METHODS:
        return None
    known = [f.name for f in fields(methods.METHODS[name].Options)]
    return methods.unknown_option(name, key.split(".", 1)[1], known)


def _semantic_error(cfg: DictConfig) -> str | None:
    """The job's own checks (T > 0, files that must exist, ...), as one line."""
    try:
        _lazy("kdrun.experiments.checks").validate(cfg)
    except KdrunError as e:
        return str(e)
    except Exception:  # e.g. ${hydra:...}, unset outside a job: the job checks it again
        return None
    return None


def precheck(args: list[str], semantic: bool = False) -> str | None:
    """Compose the config once per override value, so a typo fails fast with one line.

    Composition is checked (unknown keys/options, wrong types); ``semantic`` adds the job's
    own checks (T > 0, ...): for a single run, so that a run refused creates no directory.
    In a sweep they run inside each job, so one bad cell fails only that job.
    """
    multirun = any(a in ("-m", "--multirun") for a in args)
    candidates = _candidates([a for a in args if not a.startswith("-")], multirun)
    if isinstance(candidates, str):
        return candidates
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            for ov in candidates:
                try:
                    cfg = compose(config_name="config", overrides=ov)
                except Exception as e:
                    return _method_key_error(e, ov) or explain(e)
                if (err := method_option_error(cfg)) is not None:
                    return err
                if semantic and (err := _semantic_error(cfg)) is not None:
                    return err
    finally:
        GlobalHydra.instance().clear()
    return None


def _launch(user_full_error: str | None) -> int | None:
    """Run Hydra once; an exit status if it ended early (interrupt, error outside a job)."""
    # SIGTERM (Slurm, kill) outside a job's training loop acts like Ctrl-C instead of killing
    # the process mid-write; inside the loop, job.StopFlag turns both into a clean stop.
    old_term = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        _hydra_job()
    except KeyboardInterrupt:  # SweepInterrupted, or Ctrl-C outside a job
        sweep = _LAUNCH["sweep_dir"]
        where = f"; finish it with: kdrun resume {shlex.quote(str(sweep))}" if sweep else ""
        print(f"kdrun: interrupted; results written so far are intact{where}", file=sys.stderr)
        return 130
    except Exception as e:
        if user_full_error or _LAUNCH["debug"]:
            raise
        os_err = find_os_error(e)
        msg = os_error_message(os_err) if os_err is not None else None
        print(f"kdrun: error: {msg or explain(e)}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if user_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    return None


def _torchrun_args(args: list[str]) -> list[str] | str:
    """Under torchrun every rank runs this command: one job, in one directory. The run
    directory is named after torchrun's run id (${now:...} could differ between ranks); a
    sweep (each rank would run its own) is refused. An error line, or the arguments."""
    if not {"RANK", "WORLD_SIZE"} <= os.environ.keys():  # not under torchrun
        return args
    env = _lazy("kdrun.engine.distributed").env_from()
    if env.source != "torchrun" or env.world_size < 2:
        return args
    if any(a in ("-m", "--multirun") or a.startswith("hparams_search=") for a in args):
        return (
            "torchrun runs one job on several processes, not a sweep; sweep DDP jobs with "
            "hydra/launcher=slurm_ddp, or run the sweep without torchrun"
        )
    if any(a.startswith("hydra.run.dir=") for a in args):
        return args
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if run_id in ("", "none"):
        return "under torchrun without --standalone or --rdzv_id, give hydra.run.dir=DIR"
    return [*args, f"hydra.run.dir=outputs/runs/ddp-{run_id[:8]}"]


def run_hydra(args: list[str]) -> int:
    """Run a job or a sweep with these overrides; return the exit status of the command."""
    args = _torchrun_args(args)
    if isinstance(args, str):
        print(f"kdrun: error: {args}", file=sys.stderr)
        return 2
    user_full_error = os.environ.get("HYDRA_FULL_ERROR")
    passthrough = any(a.startswith("-") and a not in ("-m", "--multirun") for a in args)
    if not passthrough and not user_full_error:
        sweep = any(a in ("-m", "--multirun") for a in args)
        err = precheck(args, semantic=not sweep)
        if err is not None:
            print(f"kdrun: error: {err}", file=sys.stderr)
            return 2
    sys.argv = [sys.argv[0], *args]
    EXIT.reset()
    _LAUNCH.update(sweep_dir=None, debug=False)
    # Hydra prints a traceback for errors outside the job (an output directory it cannot
    # create, a config it cannot compose) unless HYDRA_FULL_ERROR is set, in which case it
    # re-raises them: set it, and turn them into one line here.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    early = _launch(user_full_error)
    if early is not None:
        return early
    sweep = _LAUNCH["sweep_dir"]
    if sweep and EXIT.code != 0:
        print(f"kdrun: {sweep_advice(Path(str(sweep)))}", file=sys.stderr)
    return EXIT.code


def sweep_advice(sweep: Path) -> str:
    """What to do about a sweep's incomplete jobs: `kdrun resume` reruns the interrupted and
    failed ones, but a job whose config was refused would only be refused again."""
    refused, other = [], []
    for f in sorted(sweep.glob("*/metrics.json")):
        try:
            m = json.loads(f.read_text())
        except (OSError, ValueError):
            m = {}
        if m.get("status") != "completed":
            (refused if m.get("error_type") == "ConfigError" else other).append(f.parent.name)
    resume = f"`kdrun resume {shlex.quote(str(sweep))}`"
    parts = []
    if other or not refused:
        parts.append(
            f"some jobs of the sweep did not complete (their metrics.json says why); {resume} "
            f"reruns only those"
        )
    if refused:
        parts.append(
            f"job(s) {', '.join(refused)} of the sweep were refused for their config (their "
            f"metrics.json says why): fix those values and run them again (resuming would "
            f"only refuse them again)"
        )
    return "; ".join(parts)
