"""Speed switches (``runtime.*``), resolved once per job and applied in one place.

None of them changes what is computed, only how fast: memory layout (channels_last), kernel
fusion (torch.compile, the fused optimiser step), where the data lives, thread count. Their
measured effect is recorded by ``bench/bench_perf.py --switches``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdrun.engine.evaluate import resolve_amp

# "auto" keeps the data on the accelerator while it takes at most this share of free memory.
_DEVICE_DATA_SHARE = 0.25


@dataclass(frozen=True)
class Perf:
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    fused_optimizer: bool = False

    @classmethod
    def from_config(cls, rt, device: torch.device) -> Perf:
        return cls(
            # NHWC is what cuDNN's (and oneDNN's) fast convolution kernels want.
            channels_last=bool(rt.channels_last) and device.type in ("cuda", "cpu"),
            compile=bool(rt.compile),
            compile_backend=str(rt.compile_backend),
            # auto: fused wherever torch has the kernel. (Always with fp16, amp=auto before
            # Ampere: its GradScaler's inf check stays on the device, no host sync per step.)
            fused_optimizer=(
                rt.fused_optimizer in ("auto", True) or resolve_amp(rt.amp, device) == "fp16"
            )
            and device.type in ("cuda", "cpu"),
        )

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """channels_last for conv nets (a convolution with NHWC weights produces NHWC outputs,
        so the inputs need no conversion); other models are left alone."""
        if self.channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules()):
            model.to(memory_format=torch.channels_last)
        return model

    def prepare_distiller(self, distiller: nn.Module) -> nn.Module:
        """Compile the whole training step's forward (student, teacher, losses) in place:
        ``Module.compile`` keeps state_dict keys, so checkpoints are unaffected."""
        if self.compile and not getattr(distiller, "_kdrun_compiled", False):
            distiller.compile(backend=self.compile_backend)
            distiller._kdrun_compiled = True
        return distiller


def configure_backends(deterministic: bool, device: torch.device) -> None:
    """Global kernel choices for a job on ``device``.

    Default: cuDNN benchmarks its algorithms per input shape (``cudnn.benchmark``) and float32
    matmuls may use TF32 on Ampere+ GPUs (precision "high"): the fastest, but run-to-run
    bits can differ on CUDA. ``deterministic``: deterministic kernels where PyTorch has them
    (``use_deterministic_algorithms``, ``cudnn.deterministic``, a fixed cuBLAS workspace, full
    float32 matmuls); slower on CUDA. Ops without a deterministic CUDA kernel (the backward of
    adaptive_avg_pool2d and of bilinear interpolate, used by at/fitnet) warn instead of failing.
    On the CPU, kdrun's kernels are deterministic either way.
    """
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda and not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if cuda:
        torch.set_float32_matmul_precision("highest" if deterministic else "high")
    if deterministic:
        # read when cuBLAS creates its handle: before the job's first matmul
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def data_device(placement: str, device: torch.device, nbytes: int) -> torch.device:
    """Where the data set's tensors live: on the training device when they fit ("auto"),
    otherwise in (pinned) host memory, from which batches are copied without blocking."""
    if device.type == "cpu" or placement == "device":
        return device
    if placement == "host":
        return torch.device("cpu")
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return device if nbytes <= _DEVICE_DATA_SHARE * free else torch.device("cpu")
    return device


def fetch(t: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows ``idx`` of ``t`` (both on the same device), delivered on ``device``.

    ``index_select`` copies whole rows (several times faster than ``t[idx]`` on CPU). Host
    data bound for CUDA is gathered straight into pinned memory, so the copy is asynchronous;
    the caching host allocator keeps the buffer alive until the copy has finished.
    """
    if not isinstance(t, torch.Tensor):  # a row source (kdrun.data.rows): decodes on the CPU
        return t.index_select(0, idx).to(device, non_blocking=True)
    if t.device == device:
        return t.index_select(0, idx)
    if device.type == "cuda":
        buf = torch.empty((len(idx), *t.shape[1:]), dtype=t.dtype, pin_memory=True)
        torch.index_select(t, 0, idx, out=buf)
        return buf.to(device, non_blocking=True)
    return t.index_select(0, idx).to(device)


@dataclass
class RowCache:
    """Per-sample teacher outputs for some rows of the training split.

    ``outputs`` is a tensor or a dict of tensors whose row ``pos[i]`` belongs to training row
    ``i`` (``pos[i] = -1``: not cached). Keyed by sample index, never by batch position, so
    shuffling cannot misalign them; caching only the student's transfer set keeps a cache of a
    large corpus (or of a large vocabulary) small."""

    outputs: Any
    pos: torch.Tensor

    @classmethod
    def full(cls, outputs: torch.Tensor) -> RowCache:
        return cls(outputs, torch.arange(len(outputs), device=outputs.device))

    def __len__(self) -> int:
        return len(self.pos)

    def covers(self, idx: torch.Tensor) -> bool:
        return bool((self.pos.index_select(0, idx.to(self.pos.device)) >= 0).all())

    def fetch(self, idx: torch.Tensor, device: torch.device) -> Any:
        rows = self.pos.index_select(0, idx)
        if isinstance(self.outputs, dict):
            return {k: fetch(v, rows.to(v.device), device) for k, v in self.outputs.items()}
        return fetch(self.outputs, rows.to(self.outputs.device), device)


def bundle_bytes(bundle) -> int:
    """The bytes of a DataBundle's tensors (its images, labels and index sets)."""
    return sum(
        v.numel() * v.element_size() for v in vars(bundle).values() if isinstance(v, torch.Tensor)
    )


def place_data(bundle, placement: str, device: torch.device):
    """Move a DataBundle (loaded on the CPU) to where it should live for training on
    ``device``; host-resident data bound for CUDA is pinned for asynchronous copies."""
    where = data_device(placement, device, bundle_bytes(bundle))
    bundle.to(where)
    if where.type == "cpu" and device.type == "cuda":
        for k, v in vars(bundle).items():
            if isinstance(v, torch.Tensor):
                setattr(bundle, k, v.pin_memory())
    return bundle
