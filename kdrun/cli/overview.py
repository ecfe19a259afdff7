"""What ``kdrun --help``, ``kdrun --version`` and ``kdrun list`` print, from kdrun.catalog: no
torch, no Hydra, so each answers in a fraction of a second."""

from __future__ import annotations

from kdrun.catalog import (
    EITHER_MODELS,
    KG_METHODS,
    KG_ONLY_METHODS,
    LM_ONLY_METHODS,
    TOKEN_MODELS,
    TRIPLE_MODELS,
    experiments,
    options,
)

# One line per subcommand, in the order `kdrun --help` shows them; kdrun.cli.commands holds
# the functions (a test checks both list the same names).
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("", "data sets, models, methods and experiments"),
    "resume": ("DIR [key=value ...]", "finish an interrupted run or sweep directory"),
    "summarize": ("DIR", "rebuild a sweep's summary table, files and plots"),
    "softmax": ("[--logits Z ...] [-T T ...]", "softmax of some logits at several temperatures"),
    "dark-knowledge": ("RUN_DIR", "a trained teacher's soft targets at several temperatures"),
    "export": ("RUN_DIR --format F", "write the distilled student alone (onnx, torchscript, ...)"),
    "generate": ("RUN_DIR [--prompt P]", "sample text from a language model a run trained"),
    "help": ("", "this text (also kdrun --help)"),
}

_USAGE = """\
kdrun: knowledge distillation experiments, driven by Hydra configs

usage:
  kdrun [key=value ...]        one job: teacher, scratch baseline, distilled student
  kdrun -m [key=a,b ...]       a sweep over the comma-separated values; one summary table
  kdrun COMMAND [args]         one of the commands below (kdrun COMMAND --help for its options)
  kdrun --version              kdrun's, torch's and Python's versions, and the device"""

_FOOTER = """\
config groups (kdrun list shows their options): {groups}
  e.g.  kdrun experiment=smoke          kdrun dataset=mnist method=dkd T=4 alpha=0.9
        kdrun -m T=1,4,8 alpha=0.5,0.9  student.train.epochs=5 teacher.checkpoint=PATH
  kdrun --cfg job [key=value ...]       the whole composed config of a job, every key
  kdrun --hydra-help                    Hydra's own options (--multirun, --config-dir, ...)"""

GROUPS = ("experiment", "dataset", "teacher", "student", "method", "logger", "condense", "scale")


def _rows(pairs: list[tuple[str, str]]) -> list[str]:
    width = max(len(k) for k, _ in pairs) + 2
    return [f"  {k.ljust(width)}{v}".rstrip() for k, v in pairs]


def help_text() -> str:
    """``kdrun --help``: every subcommand and every experiment, one line each."""
    cmds = [(f"{name} {args}".strip(), what) for name, (args, what) in COMMANDS.items()]
    exps = list(experiments().items())
    return "\n".join(
        [
            _USAGE,
            "",
            "commands:",
            *_rows(cmds),
            "",
            "experiments (kdrun experiment=NAME [key=value ...]):",
            *_rows(exps),
            "",
            _FOOTER.format(groups=", ".join(GROUPS)),
        ]
    )


def list_text(extra: dict[str, list[str]] | None = None) -> str:
    """``kdrun list``: the options of each group and the experiments. ``extra``: names that
    plugins registered, by kind (dataset, model, method), shown with kdrun's own."""
    extra = extra or {}
    models = sorted({*options("student"), *extra.get("model", [])})
    methods = sorted({*options("method"), *extra.get("method", [])})
    images = [m for m in models if m not in TOKEN_MODELS | TRIPLE_MODELS | EITHER_MODELS]
    lines = [
        f"datasets: {', '.join(sorted({*options('dataset'), *extra.get('dataset', [])}))}",
        f"models (images): {', '.join(images)}",
        f"models (tokens): {', '.join(sorted(TOKEN_MODELS & set(models)))}",
        f"models (triples): {', '.join(sorted(TRIPLE_MODELS & set(models)))}",
        f"models (either): {', '.join(sorted(EITHER_MODELS & set(models)))}",
        f"methods: {', '.join(m for m in methods if m not in LM_ONLY_METHODS | KG_ONLY_METHODS)}",
        f"lm methods: {', '.join(sorted(LM_ONLY_METHODS | {'kd'}))} (dataset=pystdlib, text)",
        f"kg methods: {', '.join(sorted(KG_METHODS))} (dataset=umls, nations, kinships, kg)",
    ]
    for group in ("logger", "condense", "scale", "hparams_search"):
        lines.append(f"{group}: {', '.join(options(group))}")
    lines += ["", "experiments (kdrun experiment=NAME):", *_rows(list(experiments().items()))]
    return "\n".join(lines)


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)


def job_header(cfg, run_dir: str) -> str:
    """The line a job starts with, before anything loads: what runs, and where."""
    knobs = " · ".join(f"{k}={_num(cfg.get(k))}" for k in ("T", "alpha"))
    return (
        f"kdrun · {cfg.dataset.name} · teacher {cfg.teacher.name} → student {cfg.student.name} "
        f"· method {cfg.method.name} · {knobs} · seed {cfg.get('seed')}\nrun dir: {run_dir}"
    )
