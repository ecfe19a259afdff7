"""Models from outside kdrun: torchvision, timm, Hugging Face transformers, any ``nn.Module``.

Registered as ``teacher=``/``student=`` config groups like kdrun's own models; each builder
takes (model config, input shape, class count) and returns a model whose feature stages are
found by probing (``kdrun.models.stages``), so feature methods work on it unchanged.

Loading never runs code the user did not ask for: weight files are ``.safetensors`` or
``torch.load(weights_only=True)`` state dicts, Hugging Face models load with
``trust_remote_code=False`` unless the config says otherwise, and ``_target_`` comes only from
the user's command line or config files.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdrun.errors import CheckpointError, ConfigError, one_line
from kdrun.models.registry import register_model
from kdrun.models.stages import annotate
from kdrun.store import CorruptArtifact, UnsafeFile, load_weights, sha256_file

# Models whose weights are a save_pretrained directory (``path=DIR``): loading one loads weights.
HF_DIRECTORY_MODELS = ("hf", "hf_causal_lm")
# Names of the extras that install each optional library (pyproject.toml).
EXTRAS = {"timm": "timm", "transformers": "hf", "onnx": "onnx", "onnxruntime": "onnx"}
# Schema keys of ModelConfig that are kdrun's own, never passed to a custom constructor.
KDRUN_KEYS = frozenset(
    {
        "name",
        "hidden",
        "channels",
        "width",
        "depth",
        "widen_factor",
        "dropout",
        "input_dropout",
        "checkpoint",
        "train",
        "arch",
        "weights",
        "path",
        "num_classes_from_data",
        "trust_remote_code",
        "finetune_epochs",
        "_target_",
        "kwargs",
        "pretrained",  # teacher.pretrained (used as built: is_pretrained)
        "view",  # which view of each example it reads (kdrun.data.views)
        "n_layer",  # gpt
        "n_head",
        "n_embd",
        "block_size",
        "dim",  # knowledge-graph embeddings (a shape key: passed when set and taken)
        "options",  # a plugin model's own fields (kdrun.config.options)
    }
)


def require(module: str) -> Any:
    """Import an optional dependency, or fail in one line naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module, module)
        raise ConfigError(f"this needs {module}: pip install 'kdrun[{extra}]'") from None


def role(cfg: Any) -> str:
    """'teacher' or 'student' for a node of the run's config (for error messages)."""
    key = cfg._key() if isinstance(cfg, DictConfig) else None
    return str(key) if key else "model"


def _opt(cfg: Any, key: str, default: Any = None) -> Any:
    return cfg.get(key, default) if isinstance(cfg, (DictConfig, dict)) else default


# --------------------------------------------------------------------------- weight files


def _unwrap(state: Any) -> Any:
    """A state dict saved inside a training checkpoint ({'state_dict': ...}, {'model': ...})."""
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            return state[key]
    return state


def load_state_file(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a weights-only ``.pt``/``.pth``; never code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{what}={path} does not exist; give the path of a weights file")
    if path.suffix == ".safetensors":
        st = require("safetensors.torch")
        try:
            return st.load_file(str(path))
        except Exception as e:
            raise CheckpointError(
                f"{what}={path} is not a readable .safetensors file ({one_line(e, 120)})"
            ) from None
    if path.suffix not in (".pt", ".pth"):
        raise ConfigError(f"{what}={path}: give a .safetensors, .pt or .pth state-dict file")
    try:
        state = _unwrap(load_weights(path))
    except UnsafeFile:
        raise CheckpointError(
            f"{what}={path} holds pickled Python objects, not plain weights, and kdrun never "
            f"runs code from a file; save model.state_dict() instead, ideally as .safetensors"
        ) from None
    except (CorruptArtifact, OSError, EOFError) as e:
        raise CheckpointError(f"{what}={path} cannot be loaded: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{what}={path} is not a state dict of tensors; save model.state_dict()"
        )
    return state


def load_into(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        reason = lines[1] if len(lines) > 1 else lines[0]
        raise CheckpointError(
            f"{what} does not fit this architecture ({reason[:160]}); check "
            f"the arch it was saved from"
        ) from None


def head_name(model: nn.Module) -> str:
    """The final classifier: the last nn.Linear in module order."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear classifier to resize")
    return names[-1]


def resize_head(model: nn.Module, num_classes: int) -> None:
    """A fresh linear classifier with ``num_classes`` outputs (fine-tuning on new classes)."""
    name = head_name(model)
    old = model.get_submodule(name)
    model.set_submodule(name, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))


def must_resize(file_classes: int, num_classes: int, cfg: Any) -> bool:
    """True when the head must be resized and the user asked for it; a class-count mismatch
    the user did not ask to resize is refused in one line."""
    if file_classes == num_classes:
        return False
    r = role(cfg)
    if not _opt(cfg, "num_classes_from_data", False):
        raise ConfigError(
            f"{r} has {file_classes} classes but the data set has {num_classes}; add "
            f"{r}.num_classes_from_data=true (and {r}.finetune_epochs=N) to resize its head"
        )
    return True


def adapt_channels(model: nn.Module, in_channels: int, model_channels: int, what: str) -> None:
    """Grayscale data into an RGB network: repeat the channel (a forward pre-hook, so the
    state dict keeps the original's keys)."""
    if in_channels == model_channels:
        return
    if in_channels != 1 or model_channels != 3:
        raise ConfigError(
            f"{what} takes {model_channels}-channel input but the data has {in_channels} channels"
        )
    model.register_forward_pre_hook(lambda _m, args: (args[0].expand(-1, 3, -1, -1), *args[1:]))
    model.kd_in_channels = 1


# --------------------------------------------------------------------------- preprocessing


@dataclass
class Preprocessing:
    """What a pretrained model expects of its input: size (H, W), mean and std per channel."""

    image_size: tuple[int, int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None


PREPROCESSING: dict[str, Callable[[Any], Preprocessing | None]] = {}


def preprocessing(cfg: Any) -> Preprocessing | None:
    """The data transform a pretrained model's own config prescribes (None: none prescribed)."""
    fn = PREPROCESSING.get(str(_opt(cfg, "name", "")))
    return fn(cfg) if fn is not None else None


def weights_identity(cfg: Any) -> str | None:
    """What the loaded weights *are*, for store keys: a file's SHA-256 (a path alone would let
    a changed file reuse results of the old one), a Hugging Face directory's files' hashes,
    or the name of a published checkpoint."""
    weights, path = _opt(cfg, "weights"), _opt(cfg, "path")
    if weights and str(weights) in ("DEFAULT", "hub"):
        return f"{_opt(cfg, 'name')}:{_opt(cfg, 'arch')}:{weights}"
    if weights:
        p = Path(str(weights)).expanduser()
        return f"sha256:{sha256_file(p)}" if p.is_file() else None
    if _opt(cfg, "name") in HF_DIRECTORY_MODELS and path and Path(path).expanduser().is_dir():
        h = hashlib.sha256()
        for f in sorted(Path(path).expanduser().rglob("*")):
            if f.is_file():
                h.update(f"{f.name}\0{sha256_file(f)}\n".encode())
        return f"hf:{h.hexdigest()}"
    return None


def with_weights(model: nn.Module, cfg: Any) -> nn.Module:
    """Load ``cfg.weights`` into one of kdrun's own models (the external builders load their
    weights themselves, head resizing included, and mark the model)."""
    weights = _opt(cfg, "weights")
    if weights and not getattr(model, "kd_weights_loaded", False):
        what = f"{role(cfg)}.weights"
        load_into(model, load_state_file(weights, what), f"{what}={weights}")
    return model


def is_pretrained(cfg: Any) -> bool:
    """Does this model config load existing weights (a teacher to evaluate, not to train)?
    A weights file (``weights=``), a ``save_pretrained`` directory (``hf``, ``hf_causal_lm``
    with ``path=``), or ``pretrained=true``: the model as its builder makes it (e.g. a custom
    module that loads its own weights)."""
    return bool(
        _opt(cfg, "weights")
        or (_opt(cfg, "name") in HF_DIRECTORY_MODELS and _opt(cfg, "path"))
        or _opt(cfg, "pretrained")
    )


# --------------------------------------------------------------------------- torchvision

# Where torchvision's DEFAULT weights are fetched from; a module attribute so tests replace it.
download_state = torch.hub.load_state_dict_from_url


def _tv_default_state(arch: str, what: str) -> dict[str, torch.Tensor]:
    tvm = require("torchvision.models")
    weights = tvm.get_model_weights(arch).DEFAULT
    name = weights.url.rsplit("/", 1)[-1]
    where = Path(torch.hub.get_dir()) / "checkpoints" / name
    try:
        return download_state(weights.url, progress=False, check_hash=True, weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{what}=DEFAULT: could not get {name} ({one_line(e, 80)}); download {weights.url} "
            f"and put it at {where}, or give {what}=PATH"
        ) from None


def _tv_build(arch: str, num_classes: int) -> nn.Module:
    tvm = require("torchvision.models")
    try:
        builder = tvm.get_model_builder(arch)
    except ValueError:
        known = ", ".join(tvm.list_models(module=tvm)[:12])
        raise ConfigError(f"unknown torchvision arch '{arch}'; e.g. {known}, ...") from None
    return builder(weights=None, num_classes=num_classes)


@register_model("torchvision", inputs="images")
def torchvision_model(cfg: Any, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """``torchvision.models.<arch>``, from scratch or with a state dict (file or DEFAULT)."""
    r, arch, weights = role(cfg), _opt(cfg, "arch"), _opt(cfg, "weights")
    if not arch:
        raise ConfigError(f"{r}=torchvision needs {r}.arch=NAME (e.g. resnet18)")
    model = _tv_build(arch, num_classes)
    if weights:
        what = f"{r}.weights"
        state = (
            _tv_default_state(arch, what)
            if str(weights) == "DEFAULT"
            else load_state_file(weights, what)
        )
        head = head_name(model)
        file_classes = int(state[f"{head}.weight"].shape[0]) if f"{head}.weight" in state else 0
        if file_classes and file_classes != num_classes:
            resize_head(model, file_classes)
        load_into(model, state, f"{what}={weights}")
        if file_classes and must_resize(file_classes, num_classes, cfg):
            resize_head(model, num_classes)
    adapt_channels(model, in_shape[0], 3, f"torchvision {arch}")
    model.kd_weights_loaded = True
    return annotate(model, in_shape, f"{r} torchvision {arch}")


def torchvision_preprocessing(cfg: Any) -> Preprocessing | None:
    """torchvision's DEFAULT weights carry their transform (crop size, mean, std)."""
    if str(_opt(cfg, "weights")) != "DEFAULT":
        return None
    tvm = require("torchvision.models")
    t = tvm.get_model_weights(_opt(cfg, "arch")).DEFAULT.transforms()
    size = int(t.crop_size[0])
    return Preprocessing((size, size), list(t.mean), list(t.std))


# --------------------------------------------------------------------------- timm


@register_model("timm", inputs="images")
def timm_model(cfg: Any, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """``timm.create_model(arch)``; weights from a file, or ``hub`` (timm's own download)."""
    timm = require("timm")
    r, arch, weights = role(cfg), _opt(cfg, "arch"), _opt(cfg, "weights")
    if not arch:
        raise ConfigError(f"{r}=timm needs {r}.arch=NAME (e.g. resnet18)")
    if not timm.is_model(arch):
        raise ConfigError(f"unknown timm arch '{arch}'; `timm.list_models()` lists them")
    chans = 3 if weights else in_shape[0]
    try:
        model = timm.create_model(arch, pretrained=str(weights) == "hub", in_chans=chans)
    except Exception as e:
        raise CheckpointError(
            f"{r}.weights=hub: timm could not fetch {arch} ({one_line(e, 80)}); "
            f"give {r}.weights=PATH to a saved state dict"
        ) from None
    if weights and str(weights) != "hub":
        state = load_state_file(weights, f"{r}.weights")
        head = head_name(model)
        if f"{head}.weight" in state:
            model.reset_classifier(int(state[f"{head}.weight"].shape[0]))
        load_into(model, state, f"{r}.weights={weights}")
    file_classes = model.num_classes
    if not weights:
        model.reset_classifier(num_classes)
    elif must_resize(file_classes, num_classes, cfg):
        model.reset_classifier(num_classes)
    adapt_channels(model, in_shape[0], chans, f"timm {arch}")
    model.kd_weights_loaded = True
    return annotate(model, in_shape, f"{r} timm {arch}")


def timm_preprocessing(cfg: Any) -> Preprocessing | None:
    """timm's ``pretrained_cfg``: input size, mean and std the weights were trained with."""
    if not _opt(cfg, "weights"):
        return None
    timm = require("timm")
    pc = timm.models.get_pretrained_cfg(_opt(cfg, "arch"))
    if pc is None:
        return None
    size = tuple(pc.input_size[-2:])
    return Preprocessing(size, list(pc.mean), list(pc.std))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Hugging Face


class HFClassifier(nn.Module):
    """A transformers image classifier whose forward returns the logits tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def _hf_dir(cfg: Any) -> Path:
    r, path = role(cfg), _opt(cfg, "path")
    if not path or not Path(path).expanduser().is_dir():
        raise ConfigError(
            f"{r}=hf needs {r}.path=DIR, a directory saved with save_pretrained (got {path})"
        )
    return Path(path).expanduser()


@register_model("hf", inputs="images")
def hf_model(cfg: Any, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """``AutoModelForImageClassification.from_pretrained(DIR)``, offline, no remote code."""
    tf = require("transformers")
    tf.utils.logging.disable_progress_bar()  # stderr carries kdrun's one-line errors only
    tf.utils.logging.set_verbosity_error()
    r, d = role(cfg), _hf_dir(cfg)
    trust = bool(_opt(cfg, "trust_remote_code", False))
    kw: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust}
    try:
        conf = tf.AutoConfig.from_pretrained(str(d), **kw)
        if must_resize(conf.num_labels, num_classes, cfg):
            kw.update(num_labels=num_classes, ignore_mismatched_sizes=True)
        model = tf.AutoModelForImageClassification.from_pretrained(str(d), **kw)
    except ConfigError:
        raise
    except Exception as e:
        hint = (
            "; set teacher.trust_remote_code=true only if you trust it"
            if "trust_remote_code" in str(e)
            else ""
        )
        raise CheckpointError(f"{r}.path={d} cannot be loaded ({one_line(e, 140)}){hint}") from None
    chans = int(getattr(model.config, "num_channels", 3))
    wrapped = HFClassifier(model)
    adapt_channels(wrapped, in_shape[0], chans, f"hf model {d.name}")
    wrapped.kd_weights_loaded = True
    return annotate(wrapped, in_shape, f"{r} hf model {d}")


def hf_preprocessing(cfg: Any) -> Preprocessing | None:
    """The saved image processor's size, mean and std (else the model config's image size)."""
    tf = require("transformers")
    d = _hf_dir(cfg)
    try:
        proc = tf.AutoImageProcessor.from_pretrained(str(d), local_files_only=True)
    except Exception:  # no preprocessor_config.json: the model config's image_size alone
        size = getattr(
            tf.AutoConfig.from_pretrained(str(d), local_files_only=True), "image_size", None
        )
        return Preprocessing((int(size), int(size))) if size else None
    s = getattr(proc, "size", None) or {}
    hw = (s.get("height"), s.get("width")) if "height" in s else (s.get("shortest_edge"),) * 2
    image_size = (int(hw[0]), int(hw[1])) if hw[0] else None
    mean, std = getattr(proc, "image_mean", None), getattr(proc, "image_std", None)
    return Preprocessing(image_size, list(mean) if mean else None, list(std) if std else None)


# --------------------------------------------------------------------------- custom

# Constructor parameter names that receive the data's shape / class count when present.
_SHAPE_ARGS = {
    "num_classes": lambda s, n: n,
    "n_classes": lambda s, n: n,
    "in_shape": lambda s, n: tuple(s),
    "input_shape": lambda s, n: tuple(s),
    "in_channels": lambda s, n: s[0],
    "in_chans": lambda s, n: s[0],
    "image_size": lambda s, n: s[1],
    "img_size": lambda s, n: s[1],
}


# Shape keys kdrun's schema already has, with its defaults: passed to a custom constructor
# that takes them only when the user set them (``teacher.width=8``: no ``+`` needed).
SHAPE_DEFAULTS = {
    "hidden": [256, 256],
    "channels": [32, 64],
    "width": 64,
    "depth": 0,
    "widen_factor": 1,
    "dropout": 0.0,
    "dim": 0,
}


def custom_kwargs(cfg: Any, params: Any = ()) -> dict[str, Any]:
    """The user's constructor arguments: keys added with ``+teacher.KEY=V``, ``kwargs``, and
    schema shape keys set away from their default when the constructor takes them."""
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    out = {k: v for k, v in c.items() if k not in KDRUN_KEYS}
    out.update({k: c[k] for k, d in SHAPE_DEFAULTS.items() if k in params and c.get(k, d) != d})
    out.update(c.get("kwargs") or {})
    return out


@register_model("custom")
def custom_model(cfg: Any, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Any nn.Module by import path, built with ``hydra.utils.instantiate``."""
    r, target = role(cfg), _opt(cfg, "_target_")
    if not target:
        raise ConfigError(f"{r}=custom needs '{r}._target_=package.module.ClassName'")
    try:
        cls = get_object(target)
    except Exception as e:
        raise ConfigError(
            f"{r}._target_={target} cannot be imported ({one_line(e, 120)}); put "
            f"its package on PYTHONPATH"
        ) from None
    if not callable(cls):
        raise ConfigError(f"{r}._target_={target} is not a class or function")
    params = inspect.signature(cls).parameters
    kwargs = custom_kwargs(cfg, params)
    for name, value in _SHAPE_ARGS.items():
        if name in params and name not in kwargs:
            kwargs[name] = value(in_shape, num_classes)
    try:
        model = instantiate({"_target_": target, **kwargs})
    except Exception as e:
        raise ConfigError(
            f"{r}._target_={target} could not be built with {sorted(kwargs)} ({one_line(e, 140)})"
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{r}._target_={target} built a {type(model).__name__}, not an nn.Module")
    return annotate(with_weights(model, cfg), in_shape, f"{r} {target}")


PREPROCESSING.update(
    torchvision=torchvision_preprocessing, timm=timm_preprocessing, hf=hf_preprocessing
)
