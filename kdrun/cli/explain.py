"""One-line explanations of the Hydra/OmegaConf composition errors people hit most."""

from __future__ import annotations

import difflib
import importlib.util
import re

from omegaconf import OmegaConf

from kdrun.config import KdrunConfig

_GROUP_MISSING = re.compile(r"Could not find '([\w-]+)/([^']+)'")
_KEY_MISSING = re.compile(r"Could not override '([^']+)'")
_BAD_VALUE = re.compile(
    r"Error merging override ([^=\s]+)=(.*?); Value '.*' of type '\w+' could not be converted to "
    r"(\w+)"
)

_NOT_A_LIST = re.compile(
    r"Error merging override ([^=\s]+)=(.*?); Invalid value assigned: \w+ is not a ListConfig"
)


def missing_key(e: BaseException) -> str | None:
    """The key of a ``key=value`` override that names no config key, if that is the error."""
    text = _one_line(e)
    m = _KEY_MISSING.search(text)
    return m.group(1).lstrip("+~") if m and "not in" in text else None


def _schema_keys() -> list[str]:
    out: list[str] = []

    def walk(node: dict, prefix: str) -> None:
        for k, v in node.items():
            out.append(prefix + k)
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")

    walk(OmegaConf.to_container(OmegaConf.structured(KdrunConfig)), "")
    return out


def suggest_keys(key: str) -> list[str]:
    """The config keys a mistyped ``key`` most likely meant: those it names the end of
    (``epochs`` -> ``student.train.epochs``, ``teacher.train.epochs``), else the closest."""
    keys = _schema_keys()
    deeper = [k for k in keys if k.endswith("." + key)]
    if deeper:
        # the student's and the teacher's first: those are what most runs change
        return sorted(deeper, key=lambda k: (not k.startswith(("student.", "teacher.")), k))[:3]
    return difflib.get_close_matches(key, keys, n=1, cutoff=0.75)


def unknown_flag(flag: str, value: str | None) -> str:
    """One line for ``--epochs 5``: kdrun's settings are key=value overrides, not options."""
    key = flag.lstrip("-").replace("-", "_")
    v = value if value is not None else "VALUE"
    meant = [f"{k}={v}" for k in suggest_keys(key)] if key else []
    hint = f"did you mean {' or '.join(meant)}? " if meant else ""
    return (
        f"unknown option '{flag}': kdrun's settings are key=value overrides; {hint}"
        f"`kdrun --help` shows the usage"
    )


def explain(e: BaseException) -> str:
    """One line naming the problem and the fix, for the composition errors people hit most."""
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
        if key.startswith(("teacher.options.", "student.options.", "dataset.options.")):
            # an open section: Hydra adds a key its YAML does not list only with +
            return (
                f"{key} is not set by the config files; add it with +{key}=VALUE "
                f"(checked against the plugin's registered options)"
            )
        near = suggest_keys(key)
        if key in near:  # the key exists: the override adds entries its YAML does not list
            return (
                f"{key} takes entries the config files do not list only with +: write "
                f"+{key}.NAME=VALUE (or '+{key}={{NAME: VALUE}}')"
            )
        hint = " or ".join(f"'{k}'" for k in near)
        hint = f"did you mean {hint}? " if hint else ""
        return f"unknown config key '{key}'; {hint}`kdrun --cfg job` lists every key"
    m = _NOT_A_LIST.search(text)
    if m:
        key, value = m.groups()
        return f"{key}={value}: '{value}' is not a list; write it as {key}=[3,5]"
    m = _BAD_VALUE.search(text)
    if m:
        key, value, typ = m.groups()
        typ = typ.lower()
        article = "an" if typ[:1] in "aeiou" else "a"
        return f"{key}={value}: '{value}' is not a valid {typ}; give {key} {article} {typ}"
    return text


# Optional launchers: the Hydra plugin each needs and the kdrun extra that installs it.
LAUNCHER_EXTRAS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "slurm_ddp": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
}
# Config groups whose options need a Hydra plugin from an extra: (group, plugin, extra).
GROUP_EXTRAS = {"hparams_search": ("hydra_plugins.hydra_optuna_sweeper", "optuna")}


def missing_launcher(override: str) -> str | None:
    """The one-line fix for ``hydra/launcher=NAME`` (or ``hparams_search=NAME``) when the
    Hydra plugin it needs is not installed."""
    key, _, name = override.partition("=")
    key = key.lstrip("+")
    if key in GROUP_EXTRAS and name not in ("", "null"):
        module, extra = GROUP_EXTRAS[key]
    elif key == "hydra/launcher" and name in LAUNCHER_EXTRAS:
        module, extra = LAUNCHER_EXTRAS[name]
    else:
        return None
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:
        found = False
    return None if found else f"{key}={name} needs an extra: pip install 'kdrun[{extra}]'"


def _one_line(e: BaseException) -> str:
    """Hydra/OmegaConf composition errors span several lines; squeeze them into one."""
    parts = []
    while e is not None:
        for line in str(e).splitlines():
            line = line.strip()
            if line and not line.startswith(
                (
                    "full_key",
                    "object_type",
                    "reference_type",
                    "Set the environment",
                    "Config search path",
                    "provider=",
                )
            ):
                parts.append(line.rstrip("."))
        e = e.__cause__
    seen: list[str] = []
    for p in parts:
        if p not in seen:
            seen.append(p)
    return "; ".join(seen)
