"""Subcommands of the single ``kdrun`` entry point (besides Hydra jobs); SUBCOMMANDS lists them."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console

from kdrun.cli.app import run_hydra
from kdrun.commands.export import FORMATS as EXPORT_FORMATS
from kdrun.commands.export import N_CHECK, ONNX_TOLERANCE, export_run
from kdrun.commands.generate import generate_text
from kdrun.commands.soft_targets import (
    CLASSIC_LOGITS,
    CLASSIC_NAMES,
    DEFAULT_TEMPERATURES,
    dark_knowledge,
    load_trained,
    render_softmax_table,
    softmax_table,
)
from kdrun.data import DATASETS
from kdrun.engine import predict
from kdrun.errors import CheckpointError, ConfigError, KdrunError
from kdrun.experiments.job import read_metrics
from kdrun.experiments.specs import run_test_inputs
from kdrun.methods import LM_METHODS, METHODS
from kdrun.methods.kg import KG_METHODS
from kdrun.models import MODEL_INPUTS, MODELS
from kdrun.report.sweep import summarize
from kdrun.store import atomic_write_json


def list_registries(args: list[str]) -> int:
    """kdrun list: the registered data sets, models and methods."""
    c = Console()
    c.print("[bold]datasets:[/]", ", ".join(sorted(DATASETS)))
    for kind in ("images", "tokens", "triples"):
        names = sorted(m for m in MODELS if MODEL_INPUTS.get(m) == kind)
        c.print(f"[bold]models ({kind}):[/]", ", ".join(names))
    if either := sorted(m for m in MODELS if m not in MODEL_INPUTS):
        c.print("[bold]models (either):[/]", ", ".join(either))
    c.print("[bold]methods:[/] ", ", ".join(sorted(METHODS)))
    c.print("[bold]lm methods:[/]", ", ".join(sorted(LM_METHODS)), "(dataset=pystdlib, text)")
    c.print("[bold]kg methods:[/]", ", ".join(sorted(KG_METHODS)), "(dataset=umls, nations, ...)")
    return 0


# Hydra overrides that pin where a run lives; `resume` sets the directory itself.
_PLACEMENT = ("hydra.run.dir=", "hydra.sweep.dir=", "hydra.mode=", "hydra.job.")


def resume(args: list[str]) -> int:
    """kdrun resume DIR [overrides...]: finish a run or sweep directory with its own overrides.

    Reads DIR/.hydra (a run) or DIR/multirun.yaml (a sweep), runs again from the original
    working directory (relative store_dir/data paths keep their meaning) in DIR itself:
    completed jobs are skipped, unfinished ones continue from their checkpoints.
    """
    if not args or args[0].startswith("-"):
        print("usage: kdrun resume RUN_OR_SWEEP_DIR [overrides...]", file=sys.stderr)
        return 2
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
        print(
            f"kdrun: error: {d} is not a kdrun run or sweep directory (no .hydra/hydra.yaml "
            f"or multirun.yaml); give the directory a run printed",
            file=sys.stderr,
        )
        return 2
    argv = [*task, *(o for o in hydra_ov if not o.startswith(_PLACEMENT)), where, *args[1:]]
    if cwd and Path(cwd).is_dir():
        os.chdir(cwd)
    return run_hydra(argv)


def summarize_sweep(args: list[str]) -> int:
    """kdrun summarize DIR: rebuild the summary table, files and plots of a sweep directory."""
    if len(args) != 1 or args[0].startswith("-"):
        print(
            "usage: kdrun summarize DIR   (a sweep directory, e.g. outputs/multirun/<date>/<time>)",
            file=sys.stderr,
        )
        return 0 if args and args[0] in ("-h", "--help") else 2
    try:
        s = summarize(args[0])
    except KdrunError as e:
        print(f"kdrun: error: {e}", file=sys.stderr)
        return e.exit_code
    return s.exit_code


# --------------------------------------------------------------------------- soft targets


def _console() -> Console:
    """Full-width tables even when the output is piped to a file."""
    c = Console()
    return c if c.is_terminal else Console(width=max(c.width, 160))


def _parse(parser: argparse.ArgumentParser, args: list[str]) -> argparse.Namespace | int:
    try:
        return parser.parse_args(args)
    except SystemExit as e:  # argparse already printed its one-line usage error
        return int(e.code or 0)


def softmax_command(args: list[str]) -> int:
    """kdrun softmax [--logits Z ...] [--names N ...] [-T T ...]: softmax at several T."""
    ap = argparse.ArgumentParser(
        prog="kdrun softmax",
        description="Softmax of the given logits at several temperatures, with entropy per T "
        "(default: Hinton's cat/dog/donkey/horse example).",
    )
    ap.add_argument("--logits", type=float, nargs="+", default=CLASSIC_LOGITS)
    ap.add_argument("--names", nargs="+", default=None, help="class names (default: classic/0..)")
    ap.add_argument("-T", "--temperatures", type=float, nargs="+", default=DEFAULT_TEMPERATURES)
    ap.add_argument("--json", action="store_true", help="print the table as JSON instead")
    ns = _parse(ap, args)
    if isinstance(ns, int):
        return ns
    names = ns.names
    if names is None:
        same = list(ns.logits) == CLASSIC_LOGITS
        names = CLASSIC_NAMES if same else [str(i) for i in range(len(ns.logits))]
    err = None
    if len(names) != len(ns.logits):
        err = f"{len(names)} names for {len(ns.logits)} logits; give one name per logit"
    elif any(not t > 0 for t in ns.temperatures):
        err = f"temperatures must be > 0 (got {ns.temperatures})"
    if err:
        print(f"kdrun softmax: error: {err}", file=sys.stderr)
        return 2
    rows = softmax_table(ns.logits, ns.temperatures)
    if ns.json:
        print(json.dumps({"names": names, "logits": ns.logits, "rows": rows}))
        return 0
    title = "softmax(z / T) of logits " + ", ".join(
        f"{n} {z:g}" for n, z in zip(names, ns.logits, strict=True)
    )
    _console().print(render_softmax_table(rows, names, title))
    return 0


def dark_knowledge_command(args: list[str]) -> int:
    """kdrun dark-knowledge RUN_DIR: a trained teacher's soft targets; PNGs in the run dir."""
    ap = argparse.ArgumentParser(
        prog="kdrun dark-knowledge",
        description="Soft targets of a trained model at several temperatures: tables in the "
        "terminal, PNG figures in RUN_DIR/dark_knowledge (or --out).",
    )
    ap.add_argument("path", type=Path, help="a kdrun run directory or a store artifact directory")
    ap.add_argument("-T", "--temperatures", type=float, nargs="+", default=DEFAULT_TEMPERATURES)
    ap.add_argument("-n", "--examples", type=int, default=6)
    ap.add_argument("--role", default="teacher", choices=["teacher", "student", "baseline"])
    ap.add_argument("--out", type=Path, default=None, help="figure directory")
    ns = _parse(ap, args)
    if isinstance(ns, int):
        return ns
    try:
        if any(not t > 0 for t in ns.temperatures):
            raise ConfigError(f"temperatures must be > 0 (got {ns.temperatures})")
        if not ns.path.is_dir():
            raise CheckpointError(f"{ns.path} is not a directory; give a kdrun run directory")
        out = ns.out or (
            ns.path / "dark_knowledge" if not (ns.path / "meta.json").is_file() else None
        )
        if out is None:
            raise ConfigError("a store artifact is read-only: add --out DIR for the figures")
        data, model = load_trained(ns.path, ns.role)
        logits = predict(model, data.x_test)
        console = _console()
        m = dark_knowledge(data, {ns.role: logits}, ns.temperatures, ns.examples, out, console)
    except KdrunError as e:
        print(f"kdrun dark-knowledge: error: {e}", file=sys.stderr)
        return e.exit_code
    atomic_write_json(m, out / "dark_knowledge.json")
    console.print(f"[dim]figures: {', '.join(str(out / f) for f in m['figures'])}[/]")
    return 0


def export_command(args: list[str]) -> int:
    """kdrun export RUN_DIR --format onnx|torchscript|safetensors [--out FILE]."""
    ap = argparse.ArgumentParser(
        prog="kdrun export",
        description="Write a run's distilled student alone (no teacher weights), with its "
        "preprocessing in FILE.json beside it; ONNX is checked against PyTorch with "
        "onnxruntime on 64 test inputs.",
    )
    ap.add_argument("run_dir", type=Path, help="a finished kdrun run directory")
    ap.add_argument("--format", required=True, choices=list(EXPORT_FORMATS))
    ap.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/export/student.*")
    ns = _parse(ap, args)
    if isinstance(ns, int):
        return ns
    try:
        inputs = None
        if ns.format == "onnx":
            inputs = run_test_inputs(ns.run_dir, N_CHECK) if ns.run_dir.is_dir() else None
        done = export_run(ns.run_dir, ns.format, ns.out, inputs)
    except KdrunError as e:
        print(f"kdrun export: error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"wrote {done.path} (student only) and {done.sidecar} (preprocessing)")
    if done.max_abs_diff is not None:
        print(
            f"onnxruntime matches PyTorch on {N_CHECK} test inputs: max abs difference "
            f"{done.max_abs_diff:.2e} (<= {ONNX_TOLERANCE:g})"
        )
    return 0


def generate_command(args: list[str]) -> int:
    """kdrun generate RUN_DIR [--prompt P] [--tokens N] [--model student|teacher|baseline]."""
    ap = argparse.ArgumentParser(
        prog="kdrun generate",
        description="Sample text from a language model a run trained (task lm).",
    )
    ap.add_argument("run_dir", type=Path, help="a kdrun run directory")
    ap.add_argument("--prompt", default="def ")
    ap.add_argument("--tokens", type=int, default=200, help="tokens to sample")
    ap.add_argument("--model", default="student", choices=["student", "teacher", "baseline"])
    ap.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ns = _parse(ap, args)
    if isinstance(ns, int):
        return ns
    try:
        if ns.tokens < 1 or ns.temperature < 0 or not 0 < ns.top_p <= 1:
            raise ConfigError("--tokens must be >= 1, --temperature >= 0, --top-p in (0, 1]")
        text = generate_text(
            ns.run_dir, ns.prompt, ns.tokens, ns.model, ns.temperature, ns.top_p, ns.seed
        )
    except KdrunError as e:
        print(f"kdrun generate: error: {e}", file=sys.stderr)
        return e.exit_code
    print(text)
    return 0


# The subcommands, by the name typed after `kdrun`.
SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    "list": list_registries,
    "resume": resume,
    "summarize": summarize_sweep,
    "softmax": softmax_command,
    "dark-knowledge": dark_knowledge_command,
    "generate": generate_command,
    "export": export_command,
}
