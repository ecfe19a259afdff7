"""Store keys by construction: what a stored artifact was made from, nothing left out by hand.

An artifact's key spec holds the *whole* resolved config sections that can change it (the
data set section, the model section with its training recipe, the runtime section), minus
the reviewed fields below that cannot, each with its reason; plus the content fingerprint of
every file the data loader read (kdrun.store.fingerprint), plus the identity of user code
(the source of a custom module or a plugin's model, an installed plugin's version). A field
added to the schema joins every key that reads its section without anyone remembering it;
tests/test_keys.py walks every schema field and fails on one that changes no key and is not
reviewed here.

One function per artifact kind, each returning the spec that ``ArtifactStore.get_or_build``
hashes: ``model_key`` (a teacher, or a model distilled from one), ``baseline_key``,
``teacher_logits_key``, ``teacher_reference_key``, ``teacher_samples_key``; ``pretrained_key`` and
``checkpoint_key`` name a teacher kdrun did not train. Every spec carries ``scheme``:
keys of stores written before this scheme never match (see ``store_notice``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import inspect
import json
import logging
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdrun.data.registry import DATASETS
from kdrun.data.views import view_identity
from kdrun.models.external import HF_DIRECTORY_MODELS, is_pretrained, weights_identity
from kdrun.models.registry import MODELS
from kdrun.store.atomic import atomic_write_text
from kdrun.store.fingerprint import DigestCache

log = logging.getLogger("kdrun.store")

# The key scheme: part of every spec, so a change of scheme never matches an older key.
SCHEME = 2

_CONTENT = "where the files lie; their content is in the key (the data fingerprint)"
_ROUNDING = "changes rounding only, not what is computed; the store shares across it"

# Fields that change no stored artifact, with why. Dotted paths into the run config; a
# section's path covers all its fields. Reviewed: add a field here only with its reason.
NEVER: dict[str, str] = {
    "device": "where it runs (CPU/CUDA differ by rounding); the store shares across devices",
    "store_dir": "where the store lies",
    "resume": "a resumed run continues the same training",
    "debug": "logging only",
    "baseline": "whether the baseline stage runs, not how it trains",
    "experiment": "the recipe's name; its settings are the other fields",
    "kind": "what the job does with the models; the models' recipes are the other fields",
    "logger": "experiment trackers only record",
    "optimized_metric": "what a search maximises, read after training",
    "analysis": "analyses read trained models; the full-data baseline's epochs reach its key "
    "through the model config (baseline_key)",
    "dataset.root": _CONTENT,
    "dataset.path": _CONTENT,
    "dataset.download": "fetches missing files; their content is in the key",
    "dataset.mirror": "where missing files are fetched from; their content is in the key",
    "dataset.num_workers": "decoding threads: the same rows",
    "dataset.in_memory": "streamed rows are bit-identical to in-memory ones (kdrun.data.rows)",
    "dataset.on_bad_image": "error either loads the same rows as skip or stops the run",
    "dataset.low_res_factor": "read by the low_res view only: a key of a model on it holds it",
    "runtime.num_threads": _ROUNDING,
    "runtime.compile": _ROUNDING,
    "runtime.compile_backend": _ROUNDING,
    "runtime.channels_last": _ROUNDING,
    "runtime.fused_optimizer": _ROUNDING,
    "runtime.deterministic": _ROUNDING,
    "runtime.data_on_device": "where batches live: the same values",
    "runtime.cache_teacher_logits": "replayed logits are the teacher's (checked on load)",
    "runtime.progress": "display only",
    "runtime.parallel_baseline": "which process trains the baseline, not how",
    "runtime.eval_batch_size": _ROUNDING,
    "runtime.dist_backend": "the communication library",
    "runtime.dist_timeout_s": "how long a rank waits",
    "runtime.max_data_memory": "in memory or streamed: the same rows (kdrun.data.rows)",
}
# Inside a model section (teacher, student, or a model a method builds).
MODEL_NEVER: dict[str, str] = {
    "checkpoint": "a checkpoint teacher is loaded, not trained: checkpoint_key names its content",
}
_STUDENT_ROWS = (
    "dataset.train_fraction",
    "dataset.omit_classes",
    "dataset.keep_classes",
    "dataset.unlabelled_transfer",
)
_WHOLE_SPLIT = "the teacher trains on the whole training split, not the student's rows"
_NOT_CONDENSED = "kind=condense's settings: the synthetic set's key (condensed_key)"
_NOT_TEACHER = {
    "condense": _NOT_CONDENSED,
    "student": "the teacher does not depend on the student",
    "method": "the teacher learns from labels; a method's own models pass their configs",
    "T": "the teacher learns from labels",
    "alpha": "the teacher learns from labels",
    "seed": "the teacher has its own seed (teacher_seed)",
    **{k: _WHOLE_SPLIT for k in _STUDENT_ROWS},
}
_BY_OUTPUTS = "the method's teacher_output_spec names what of it shapes the outputs"
# What each kind of artifact does not read beyond NEVER (the test walks each kind).
KIND_NEVER: dict[str, dict[str, str]] = {
    "teacher": _NOT_TEACHER,
    "distilled": {
        "condense": _NOT_CONDENSED,
        "student": "a model a method asks for is keyed by its own config (ctx.model)",
        "method": "a model a method asks for is keyed by the config it passes (ctx.model)",
        **{k: _WHOLE_SPLIT for k in _STUDENT_ROWS},
    },
    "baseline": {
        "condense": _NOT_CONDENSED,
        "teacher": "the baseline never sees the teacher",
        "teacher_seed": "the baseline never sees the teacher",
        "method": "the baseline learns from labels",
        "dataset.unlabelled_transfer": "the baseline learns from the labelled rows only",
        "T": "the baseline learns from labels",
        "alpha": "the baseline learns from labels",
    },
    "teacher_logits": {
        "condense": _NOT_CONDENSED,
        "student": "the teacher's outputs do not depend on the student",
        "method": _BY_OUTPUTS,
        "T": _BY_OUTPUTS,
        "alpha": _BY_OUTPUTS,
        "seed": "the teacher's seed is in its key",
    },
    "teacher_test_logits": {
        **_NOT_TEACHER,
        "seed": "the teacher's seed is in its key",
    },
    "teacher_samples": {
        "condense": _NOT_CONDENSED,
        "student": "the teacher's samples do not depend on the student",
        "method": "the sampling options are passed in (opts)",
        "T": "the sampling temperature is in opts",
        "alpha": "the sampling does not weigh losses",
        "seed": "samples are drawn with teacher_seed",
    },
    "synthetic": {
        "teacher": "condensation matches real images with random nets, not the teacher",
        "teacher_seed": "condensation never trains the teacher",
        "student": "condensation matches with condense.net, not the student",
        "method": "condensation has no distillation method",
        "T": "the synthetic images are learned without soft labels",
        "alpha": "the synthetic images are learned without soft labels",
        **{k: "the images are learned on the whole training split" for k in _STUDENT_ROWS},
        **{
            f"condense.{k}": "evaluates the synthetic set, does not make it"
            for k in (
                "soft_labels",
                "eval_seeds",
                "eval_epochs",
                "eval_lr",
                "eval_batch",
                "eval_dsa",
                "full_data",
                "checkpoint_every",
            )
        },
    },
}


def excluded(kind: str, model: str | None = None) -> dict[str, str]:
    """Every field the ``kind`` of artifact does not read, with the reason (NEVER, its own,
    and MODEL_NEVER inside its model section ``model``: student for a baseline, else
    teacher)."""
    model = model or ("student" if kind == "baseline" else "teacher")
    inside = {f"{model}.{k}": why for k, why in MODEL_NEVER.items()}
    return {**NEVER, **KIND_NEVER[kind], **inside}


def _drop(tree: dict[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    """``tree`` without the fields at dotted ``paths`` (absent ones are ignored)."""
    for path in paths:
        *parents, leaf = path.split(".")
        node: Any = tree
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return tree


def _no_empty_options(spec: dict[str, Any]) -> dict[str, Any]:
    """Without ``options`` when none are given: a model or data set that takes none keeps the
    key it had before the field existed, so the artifacts stored then are still found."""
    if not spec.get("options"):
        spec.pop("options", None)
    return spec


def _container(node: Any) -> Any:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node) if isinstance(node, Mapping) else node


def _under(prefix: str, table: Mapping[str, str]) -> list[str]:
    """The paths of ``table`` inside section ``prefix``, relative to it."""
    n = len(prefix) + 1
    return [k[n:] for k in table if k.startswith(prefix + ".")]


def state_digest(model: nn.Module) -> str:
    """sha256 of a model's weights (names, shapes, dtypes and values)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- user code


@functools.cache
def _top_level_distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()  # scans every installed package: once


def _distribution(module: str) -> str | None:
    """'name==version' of the installed distribution that provides ``module``, if any."""
    top = module.split(".")[0]
    names = _top_level_distributions().get(top) or []
    if not names:
        return None
    try:
        return f"{names[0]}=={importlib.metadata.version(names[0])}"
    except importlib.metadata.PackageNotFoundError:
        return None


def _source_files(obj: Any) -> dict[str, str]:
    """The source files that define ``obj``: its file, and every .py file of its top-level
    package when that package is the user's own (not an installed distribution)."""
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    files: dict[str, str] = {}
    try:
        own = inspect.getsourcefile(obj)
    except TypeError:
        own = None
    if own:
        files[Path(own).name] = own
    top = sys.modules.get(module.__name__.split(".")[0]) if module else None
    pkg = getattr(top, "__path__", None)
    if pkg and _distribution(module.__name__) is None:
        for root in map(Path, pkg):
            for p in sorted(root.rglob("*.py")):
                files[f"{top.__name__}/{p.relative_to(root).as_posix()}"] = str(p)
    return files


def code_identity(obj: Any, cache: DigestCache | None = None) -> dict[str, Any] | None:
    """What user code *is*, for store keys: its distribution's version (an installed
    plugin) and the hash of its source files; None for kdrun's own code (covered by SCHEME)."""
    module = getattr(obj, "__module__", "") or ""
    if module == "kdrun" or module.startswith("kdrun."):
        return None
    files = _source_files(obj)
    ident: dict[str, Any] = {"object": f"{module}.{getattr(obj, '__qualname__', obj)}"}
    dist = _distribution(module)
    if dist:
        ident["distribution"] = dist
    if files:
        h = hashlib.sha256()
        cache = cache or DigestCache()
        for name in sorted(files):
            h.update(f"{name}\0{cache.file(files[name])}\n".encode())
        cache.save()
        ident["source"] = h.hexdigest()[:32]
    return ident


def model_code(model_cfg: Any) -> dict[str, Any] | None:
    """The code identity of the model a config builds: a custom ``_target_``, or a builder a
    plugin registered; None for kdrun's own models."""
    name = model_cfg.get("name")
    target = model_cfg.get("_target_")
    if name == "custom" and target:
        module, _, attr = str(target).rpartition(".")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError):
            return {"unresolved": str(target)}  # it cannot be built either
        return code_identity(obj)
    builder = MODELS.get(str(name))
    return code_identity(builder) if builder is not None else None


# --------------------------------------------------------------------------- sections


def data_section(cfg: Any, kind: str, data_fp: str) -> dict[str, Any]:
    """The data set section as ``kind`` reads it, and the content it was loaded from."""
    spec = _no_empty_options(_drop(_container(cfg.dataset), _under("dataset", excluded(kind))))
    tok = spec.get("tokenizer")
    if tok and Path(str(tok)).expanduser().is_dir():  # a local tokenizer: by its content
        spec["tokenizer"] = "tree:" + DigestCache().tree(Path(str(tok)).expanduser())[:32]
    spec["content"] = data_fp
    spec_of = DATASETS.get(str(spec.get("name")))
    code = code_identity(spec_of.load) if spec_of is not None else None
    if code:  # a plugin's loader: its code decides what the files become
        spec["loader"] = code
    return spec


def model_section(model_cfg: Any, built: nn.Module | None = None) -> dict[str, Any]:
    """A model section (its training recipe included) as a key reads it: pretrained weights
    by their content, user code by its source, a model used as built by its weights."""
    spec = _no_empty_options(_drop(_container(model_cfg), MODEL_NEVER))
    spec.pop("view", None)  # the model's view is the key's own entry (_with_view)
    if not spec.get("input_dropout"):  # off: the keys of models stored before the field
        spec.pop("input_dropout", None)
    ident = weights_identity(model_cfg)
    if ident:
        spec["weights"] = ident
        if spec.get("name") in HF_DIRECTORY_MODELS:
            spec.pop("path", None)  # the directory's content is the identity
        spec.pop("pretrained", None)  # beside weights it names nothing more
    elif built is not None and is_pretrained(model_cfg):
        spec["state"] = state_digest(built)
    code = model_code(model_cfg)
    if code:
        spec["code"] = code
    return spec


def _with_view(spec: dict[str, Any], cfg: Any, model_cfg: Any) -> dict[str, Any]:
    """``spec`` with the view its model reads (kdrun.data.views), what derives it included;
    none for the data set's own view, so those keys are the ones stored before views."""
    ident = view_identity(cfg.dataset, model_cfg.get("view"))
    if ident is not None:
        spec["view"] = ident
    return spec


def runtime_section(cfg: Any) -> dict[str, Any]:
    return _drop(_container(cfg.runtime), _under("runtime", NEVER))


def _top(cfg: Any, kind: str, names: Iterable[str]) -> dict[str, Any]:
    """Top-level scalars ``kind`` reads (those not excluded for it)."""
    skip = excluded(kind)
    return {k: _container(cfg[k]) for k in names if k not in skip}


# --------------------------------------------------------------------------- the kinds


def model_key(
    cfg: Any,
    model_cfg: Any,
    seed: int,
    data_fp: str,
    built: nn.Module | None = None,
    teacher_keys: list[str] | None = None,
) -> dict[str, Any]:
    """A model trained on the teacher's rows: on labels (a teacher: ``teacher_keys`` None), or
    distilled from the teachers named by ``teacher_keys`` with the run's T and alpha.
    Replaces the spec of ``Pipeline.model``."""
    kind = "teacher" if teacher_keys is None else "distilled"
    spec = {
        "scheme": SCHEME,
        "role": kind,
        "model": model_section(model_cfg, built),
        "data": data_section(cfg, kind, data_fp),
        "runtime": runtime_section(cfg),
        "seed": seed,
    }
    if teacher_keys is not None:
        spec.update(teacher_keys=list(teacher_keys), **_top(cfg, kind, ("T", "alpha")))
    return _with_view(spec, cfg, model_cfg)


def baseline_key(cfg: Any, s_cfg: Any, data_fp: str, full_data: bool = False) -> dict[str, Any]:
    """The student trained from scratch on its transfer set (``s_cfg``: the student section,
    epochs possibly replaced); ``full_data``: on the whole training split, sharing the key of
    an unrestricted run's baseline. Replaces ``Pipeline.baseline_spec``'s spec."""
    data = data_section(cfg, "baseline", data_fp)
    if full_data:
        data.update(train_fraction=1.0, omit_classes=[], keep_classes=[])
    spec = {
        "scheme": SCHEME,
        "role": "baseline",
        "model": model_section(s_cfg),
        "data": data,
        "runtime": runtime_section(cfg),
        "seed": cfg.seed,
    }
    return _with_view(spec, cfg, s_cfg)


def teacher_logits_key(
    cfg: Any,
    teacher_keys: list[str],
    outputs_spec: Any,
    data_fp: str,
    method_code: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Teacher outputs on the student's training rows (``outputs_spec``: the method's
    ``teacher_output_spec()``; ``method_code``: ``code_identity(type(distiller))``, as a
    plugin's method computes the outputs). Replaces the spec of ``Pipeline.teacher_cache``."""
    spec = {
        "scheme": SCHEME,
        "teachers": list(teacher_keys),
        "outputs": outputs_spec,
        "data": data_section(cfg, "teacher_logits", data_fp),
        "runtime": runtime_section(cfg),
    }
    if method_code:
        spec["method_code"] = method_code
    # the teacher's view, also when its key does not hold it (a checkpoint or pretrained one)
    return _with_view(spec, cfg, cfg.teacher)


def teacher_reference_key(cfg: Any, teacher_key: str, data_fp: str) -> dict[str, Any]:
    """The teacher's outputs on the test split. Replaces ``Pipeline.teacher_reference``'s."""
    spec = {
        "scheme": SCHEME,
        "teacher": teacher_key,
        "data": data_section(cfg, "teacher_test_logits", data_fp),
        "runtime": runtime_section(cfg),
    }
    return _with_view(spec, cfg, cfg.teacher)  # as in teacher_logits_key


def teacher_samples_key(cfg: Any, teacher_key: str, opts: Any, data_fp: str) -> dict[str, Any]:
    """Sequences sampled from the teacher on the transfer set (sequence-level KD; ``opts``
    the method's options). Replaces the spec of ``Pipeline.teacher_samples``."""
    return {
        "scheme": SCHEME,
        "teacher": teacher_key,
        "options": dict(vars(opts)) if hasattr(opts, "__dict__") else _container(opts),
        "data": data_section(cfg, "teacher_samples", data_fp),
        "runtime": runtime_section(cfg),
        **_top(cfg, "teacher_samples", ("teacher_seed",)),
    }


def condensed_key(cfg: Any, data_fp: str) -> dict[str, Any]:
    """A condensed (synthetic) training set: the condense section minus what only evaluates
    it, the data, the seed. Replaces the spec of ``experiments.condense.learn_images``."""
    skip = _under("condense", excluded("synthetic"))
    return {
        "scheme": SCHEME,
        "condense": _drop(_container(cfg.condense), skip),
        "data": data_section(cfg, "synthetic", data_fp),
        "runtime": runtime_section(cfg),
        "seed": cfg.seed,
    }


def pretrained_key(model_cfg: Any, built: nn.Module) -> dict[str, Any]:
    """A pretrained teacher used as loaded (what ``pretrained:...`` teacher keys hash)."""
    return {"scheme": SCHEME, "model": model_section(model_cfg, built)}


def checkpoint_key(path: str | Path) -> str:
    """A teacher loaded from teacher.checkpoint: the file's content."""
    cache = DigestCache()
    digest = cache.file(Path(path).expanduser())
    cache.save()
    return f"file:{digest}"


# --------------------------------------------------------------------------- old stores

_MARKER = "SCHEME"


def _older(meta: Path) -> bool:
    """An entry written under an earlier scheme (its spec's ``scheme``; entries copied from a
    current store into a new one are not)."""
    try:
        spec = json.loads(meta.read_text()).get("spec") or {}
    except (OSError, ValueError, AttributeError):
        return False  # absent or unreadable: the store's own checks deal with it
    return not isinstance(spec, dict) or int(spec.get("scheme") or 0) < SCHEME


def store_notice(root: str | Path) -> str | None:
    """One line when the store at ``root`` holds entries of an earlier key scheme (they are
    never matched: their artifacts are rebuilt as needed), said once per store: the scheme is
    then recorded in ``root/SCHEME``. None for a new or current store."""
    root = Path(root)
    marker = root / _MARKER
    try:
        if marker.is_file() and int(marker.read_text().strip() or 0) >= SCHEME:
            return None
    except (OSError, ValueError):
        pass
    old = root.is_dir() and any(
        _older(entry / "meta.json")
        for kind in root.iterdir()
        if kind.is_dir()
        for entry in kind.iterdir()
        if entry.is_dir()
    )
    try:
        atomic_write_text(f"{SCHEME}\n", marker)
    except OSError:
        pass  # a read-only store: the notice repeats, nothing else changes
    if not old:
        return None
    return (
        f"the store {root} was written by an earlier kdrun version (key scheme < {SCHEME}); "
        "its models and caches are not reused and are rebuilt as needed"
    )
