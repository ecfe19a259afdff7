"""Checks a stored artifact must pass when it is loaded: it is what it claims to be.

Per-sample outputs (a tensor, or a dict of tensors, first dim the sample) are checked row by
row: the row count, finiteness, and a spread of rows recomputed now and compared, so a stale
or shifted cache fails and is rebuilt instead of being used. ``outputs_check`` serves the
teacher's outputs on the training rows (the logit cache), ``reference_check`` its outputs on
the test split (what agreement and KL to the teacher are measured against). The data they
were computed on is in their key (the data fingerprint) and ArtifactStore checks that the
stored spec is the one asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from kdrun.engine.distributed import single_process
from kdrun.store.atomic import CorruptArtifact

PROBES = 32  # rows recomputed per check: a shift or a stale teacher shows in any of them


def n_rows(out: Any) -> int | None:
    """The sample count of per-sample outputs; None if they are not per-sample outputs."""
    if isinstance(out, dict) and out and all(isinstance(v, torch.Tensor) for v in out.values()):
        sizes = {v.shape[0] for v in out.values()}
        return sizes.pop() if len(sizes) == 1 else None
    return out.shape[0] if isinstance(out, torch.Tensor) and out.dim() >= 1 else None


def _parts(out: Any) -> dict[str, torch.Tensor]:
    out = {k: v.cpu() for k, v in out.items()} if isinstance(out, dict) else {"": out.cpu()}
    return out


def probe_positions(n: int, k: int = PROBES) -> torch.Tensor:
    """``k`` positions spread over ``n`` rows, first and last included."""
    return torch.linspace(0, max(n - 1, 0), min(n, k)).long()


def outputs_check(
    outputs: Callable[[torch.Tensor], Any],
    rows: torch.Tensor,
    rtol: float,
    what: str = "teacher outputs",
) -> Callable[[Any], None]:
    """A store check: the stored outputs must be ``outputs(rows[i])`` for every i (compared on
    a spread of rows). ``rtol``: CUDA's TF32 matmuls and per-shape kernels differ from the
    batches the outputs were built with by more than float32 rounding; a stale cache is off by
    far more. Integer parts (e.g. top-k token ids, which near ties may swap) are not compared."""

    def check(stored: Any) -> None:
        n = len(rows)
        if n_rows(stored) != n:
            raise CorruptArtifact(f"{what} do not match the rows they are for ({n} rows)")
        parts = stored if isinstance(stored, dict) else {"": stored}
        if not all(torch.isfinite(v.float()).all() for v in parts.values()):
            raise CorruptArtifact(f"{what} contain NaN/inf")
        at = probe_positions(n)
        fresh = _parts(outputs(rows[at.to(rows.device)]))
        for k, v in fresh.items():
            if not v.is_floating_point():
                continue
            old = parts[k][at].float()
            tol = rtol * (1 + float(v.float().abs().max()))
            if v.shape != old.shape or not torch.allclose(v.float(), old, rtol=rtol, atol=tol):
                raise CorruptArtifact(f"{what} differ from what the teacher gives now")

    return check


class _TestRows:
    """A data set seen through some of its test rows (everything else as it is)."""

    def __init__(self, data: Any, rows: torch.Tensor):
        self._data, self.x_test, self.y_test = data, data.x_test[rows], data.y_test[rows]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._data, name)


def reference_outputs(
    task: Any, teacher: nn.Module, data: Any, amp: str
) -> Callable[[torch.Tensor], Any]:
    """``rows -> task.teacher_reference`` on those test rows: what the stored test outputs
    must hold there. Computed in this process alone (a store check runs on one rank)."""

    def outputs(rows: torch.Tensor) -> Any:
        with single_process():
            return task.teacher_reference(teacher, _TestRows(data, rows.cpu()), len(rows), amp)

    return outputs


def reference_check(
    task: Any, teacher: nn.Module, data: Any, amp: str, rtol: float
) -> Callable[[Any], None]:
    """The check of the teacher's stored test outputs (``teacher_test_logits``): one row per
    test sample, finite, and equal to the teacher's outputs now on a spread of test rows."""
    rows = torch.arange(len(data.y_test))
    outputs = reference_outputs(task, teacher, data, amp)
    return outputs_check(outputs, rows, rtol, "the teacher's test outputs")
