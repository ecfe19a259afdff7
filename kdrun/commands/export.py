"""``kdrun export RUN_DIR --format onnx|torchscript|safetensors [--out FILE]``.

Writes the distilled student alone (its own weights, never a teacher's) and, beside it,
``FILE.json`` with what a user needs to feed it: input shape, pixel scale, mean, std and
class names. The ONNX file is checked against PyTorch on 64 test inputs with onnxruntime.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdrun.errors import CheckpointError, ConfigError, KdrunError, one_line
from kdrun.models import build_model, load_state_file, require
from kdrun.store import atomic_write, atomic_write_json

FORMATS = ("onnx", "torchscript", "safetensors")
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "safetensors": ".safetensors"}
PREPROCESSING_FILE = "preprocessing.json"  # written by the run into checkpoints/
ONNX_TOLERANCE = 1e-4
N_CHECK = 64


@dataclass
class Exported:
    path: Path
    sidecar: Path
    max_abs_diff: float | None = None


def preprocessing_record(data: Any, student_cfg: Any) -> dict[str, Any]:
    """What a deployed student needs besides its weights (the run writes it next to them)."""
    rec: dict[str, Any] = {
        "input_shape": list(data.in_shape),
        "num_classes": data.num_classes,
        "student": OmegaConf.to_container(student_cfg, resolve=True)
        if isinstance(student_cfg, DictConfig)
        else dict(student_cfg),
    }
    if not hasattr(data, "mean"):  # token ids (a text corpus): the tokenizer is the recipe
        rec.update(tokenizer=data.extra.get("tokenizer"), input="int64 token ids (B, L)")
        return rec
    rec.update(
        class_names=list(data.class_names),
        mean=[float(v) for v in data.mean],
        std=[float(v) for v in data.std],
        pixel_max=data.extra.get("pixel_max", 1.0),
        input="float32 NCHW: (pixel / pixel_max - mean[c]) / std[c]",
    )
    view = data.extra.get("view")
    if view:  # the student read a view of the data set's images (kdrun.data.views)
        rec["view"] = view
        if view.get("factor"):
            f = view["factor"]
            rec["input"] += f", then the mean of each {f}x{f} block (input_shape)"
    return rec


def _run_config(run_dir: Path) -> DictConfig:
    p = run_dir / ".hydra" / "config.yaml"
    if not p.is_file():
        raise ConfigError(
            f"{run_dir} is not a kdrun run directory (no .hydra/config.yaml); give "
            f"the directory a run printed"
        )
    return OmegaConf.load(p)


def _student_state(run_dir: Path) -> dict[str, torch.Tensor]:
    p = run_dir / "checkpoints" / "student.pt"
    if not p.is_file():
        raise CheckpointError(
            f"{p} does not exist: the run did not finish; `kdrun resume {run_dir}` completes it"
        )
    state = load_state_file(p, "student checkpoint")
    # Only the student's own tensors: a state saved from a Distiller carries the teacher too.
    if any(k.startswith("student.") for k in state):
        state = {k[len("student.") :]: v for k, v in state.items() if k.startswith("student.")}
    return state


def load_student(run_dir: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The run's distilled student (eval mode, CPU) and its preprocessing record."""
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a directory; give a kdrun run directory")
    rec_p = run_dir / "checkpoints" / PREPROCESSING_FILE
    if not rec_p.is_file():
        raise CheckpointError(
            f"{rec_p} is missing (a run from an older kdrun); rerun it to export its student"
        )
    rec = json.loads(rec_p.read_text())
    cfg = OmegaConf.create(rec["student"])
    model = build_model(cfg, tuple(rec["input_shape"]), rec["num_classes"])
    try:
        model.load_state_dict(_student_state(run_dir))
    except RuntimeError as e:
        raise CheckpointError(
            f"student.pt of {run_dir} does not fit its config ({one_line(e, 120)})"
        ) from None
    return model.eval(), rec


def _save_safetensors(model: nn.Module, _x: torch.Tensor, out: Path) -> None:
    st = require("safetensors.torch")
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(out, lambda f: f.write(st.save(state)))


def _save_torchscript(model: nn.Module, x: torch.Tensor, out: Path) -> None:
    # TorchScript is deprecated upstream in favour of torch.export, but it is still what
    # C++ (libtorch) and mobile runtimes load; the warnings say nothing the user can act on.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, x, check_trace=False)
        atomic_write(out, lambda f: torch.jit.save(traced, f))


def _save_onnx(model: nn.Module, x: torch.Tensor, out: Path) -> None:
    require("onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    # The TorchScript-based exporter: seconds faster than the torch.export one for these
    # small feed-forward students, and its graph is checked against onnxruntime below.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(tmp),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    tmp.replace(out)


SAVERS = {"onnx": _save_onnx, "torchscript": _save_torchscript, "safetensors": _save_safetensors}


def onnx_max_diff(path: Path, model: nn.Module, x: torch.Tensor) -> float:
    """max |onnxruntime - PyTorch| over the logits of ``x``."""
    ort = require("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    return float(np.abs(got - want).max())


def export_run(
    run_dir: Path, fmt: str, out: Path | None = None, inputs: torch.Tensor | None = None
) -> Exported:
    """Export the student of ``run_dir``; ``inputs``: test inputs to check ONNX against."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    run_dir = Path(run_dir).expanduser().resolve()
    model, rec = load_student(run_dir)
    out = Path(out) if out else run_dir / "export" / f"student{SUFFIX[fmt]}"
    x = (
        inputs[:N_CHECK].float()
        if inputs is not None
        else torch.randn(N_CHECK, *rec["input_shape"], generator=torch.Generator().manual_seed(0))
    )
    SAVERS[fmt](model, x[:2], out)
    sidecar = out.with_name(out.name + ".json")
    atomic_write_json({**rec, "format": fmt, "file": out.name, "run": str(run_dir)}, sidecar)
    diff = None
    if fmt == "onnx":
        diff = onnx_max_diff(out, model, x)
        if not diff <= ONNX_TOLERANCE:
            raise KdrunError(
                f"{out}: onnxruntime's outputs differ from PyTorch's by {diff:.2e} "
                f"(> {ONNX_TOLERANCE:g}); the ONNX file is not trustworthy"
            )
    return Exported(out, sidecar, diff)
