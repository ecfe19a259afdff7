"""What kdrun ships, read from conf/ without importing torch or Hydra: the config directory,
the experiments with their one-line summaries, the option names of each config group, and the
versions. ``kdrun --help``, ``--version`` and ``list`` answer from here in well under a second;
the registries (kdrun.data, kdrun.models, kdrun.methods) import torch, which alone takes
seconds. A test checks that the names here match the registries."""

from __future__ import annotations

import platform
import re
from importlib import metadata, util
from pathlib import Path

from kdrun.errors import ConfigError

# The line of a conf/experiment/*.yaml that `kdrun --help` and `kdrun list` show.
SUMMARY = re.compile(r"^#\s*summary:\s*(.+?)\s*$")
# Models that read token ids (language models); "custom" takes whatever its code takes.
TOKEN_MODELS = frozenset({"gpt", "hf_causal_lm"})
EITHER_MODELS = frozenset({"custom"})
# Methods for the lm task only (kd serves both tasks).
LM_ONLY_METHODS = frozenset({"jsd", "reverse_kl", "seqkd"})
LM_METHODS = LM_ONLY_METHODS | {"kd"}
# Models that read (head, relation) queries, and the methods of the kg task (pip install kdrun[kg]).
TRIPLE_MODELS = frozenset({"complex", "rotate", "transe"})
KG_ONLY_METHODS = frozenset({"dualde"})
KG_METHODS = KG_ONLY_METHODS | {"kd"}


def config_dir() -> str:
    """Absolute path of the config tree: ``conf/`` in a checkout, ``kdrun/conf`` in a wheel."""
    here = Path(__file__).resolve().parent
    for cand in (here / "conf", here.parent / "conf"):
        if (cand / "config.yaml").is_file():
            return str(cand)
    raise ConfigError("kdrun's config directory was not found; reinstall kdrun")


def options(group: str) -> list[str]:
    """The option names of a config group (conf/<group>/*.yaml), sorted."""
    return sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))


def experiments() -> dict[str, str]:
    """Each experiment's name and its one-line summary (the ``# summary:`` comment)."""
    out = {}
    for name in options("experiment"):
        text = (Path(config_dir()) / "experiment" / f"{name}.yaml").read_text().splitlines()
        found = (m.group(1) for m in map(SUMMARY.match, text) if m)
        out[name] = next(found, "")
    return out


def torch_build() -> dict[str, str | None]:
    """torch's version and the accelerator it was built for, read from torch/version.py
    without importing torch; {} if torch is not installed."""
    spec = util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(list(spec.submodule_search_locations)[0]) / "version.py"
    fields = dict.fromkeys(("__version__", "cuda", "hip"))
    if path.is_file():
        for line in path.read_text().splitlines():
            m = re.match(r"^(__version__|cuda|hip)\s*(?::[^=]*)?=\s*'([^']*)'", line)
            if m:
                fields[m.group(1)] = m.group(2)
    return fields


def likely_device(build: dict[str, str | None]) -> str:
    """What ``device=auto`` will pick, judged without initialising CUDA: a CUDA (or ROCm)
    build of torch and a loaded GPU driver give cuda, anything else the CPU."""
    if build.get("cuda") and Path("/proc/driver/nvidia/version").is_file():
        driver = Path("/proc/driver/nvidia/version").read_text().split("\n", 1)[0]
        m = re.search(r"Kernel Module\s+([\d.]+)", driver)
        return f"cuda (CUDA {build['cuda']} build, NVIDIA driver {m.group(1) if m else 'found'})"
    if build.get("hip") and Path("/dev/kfd").exists():
        return f"cuda (ROCm {build['hip']} build, AMD GPU driver found)"
    why = "no GPU driver found" if build.get("cuda") or build.get("hip") else "CPU-only build"
    return f"cpu ({why})"


def version_text() -> str:
    """kdrun's version, torch's, Python's and the device ``device=auto`` will use."""
    try:
        kdrun_version = metadata.version("kdrun")
    except metadata.PackageNotFoundError:
        kdrun_version = "unknown (not installed)"
    build = torch_build()
    device = likely_device(build) if build else "none (torch is not installed)"
    return "\n".join(
        [
            f"kdrun {kdrun_version}",
            f"torch {build.get('__version__') or 'not installed'}, "
            f"Python {platform.python_version()}",
            f"device: {device}",
        ]
    )
