"""The synthetic set: learnable images per class, their labels, optional teacher soft labels.

Images live in the data set's normalised space (the one the networks see); ``mean``/``std``
travel with them so a picture, or a later run that uses them as a data set, can undo it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdrun.data.images import save_class_grid


@dataclass
class SyntheticSet:
    images: torch.Tensor  # (classes * ipc, C, H, W), class-major: ipc rows of class 0 first
    labels: torch.Tensor  # (classes * ipc,) int64
    mean: torch.Tensor  # (C,) the normalisation the images are expressed in
    std: torch.Tensor
    soft_logits: torch.Tensor | None = None  # teacher logits for each image (T applied later)
    T: float | None = None
    dataset: str = ""
    class_names: list[str] | None = None

    @property
    def ipc(self) -> int:
        return int((self.labels == self.labels[0]).sum())

    def to_payload(self) -> dict[str, Any]:
        """Plain tensors and containers only: loadable with torch.load(weights_only=True)."""
        return {
            "images": self.images.detach().cpu(),
            "labels": self.labels.cpu(),
            "mean": self.mean.cpu(),
            "std": self.std.cpu(),
            "soft_logits": None if self.soft_logits is None else self.soft_logits.cpu(),
            "T": self.T,
            "dataset": self.dataset,
            "class_names": list(self.class_names or []),
        }

    @classmethod
    def from_payload(cls, p: dict[str, Any]) -> SyntheticSet:
        return cls(
            p["images"],
            p["labels"],
            p["mean"],
            p["std"],
            p.get("soft_logits"),
            p.get("T"),
            p.get("dataset", ""),
            p.get("class_names") or None,
        )

    def pixels(self) -> torch.Tensor:
        """The images in [0, 1] (un-normalised, clipped) for pictures."""
        x = self.images.detach().cpu() * self.std[None, :, None, None]
        return (x + self.mean[None, :, None, None]).clamp(0, 1)


def class_rows(y: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    """For each class, the indices of its rows in ``y``."""
    return [torch.nonzero(y == c).flatten() for c in range(num_classes)]


def initial_images(
    x: torch.Tensor,
    rows: list[torch.Tensor],
    ipc: int,
    init: str,
    gen: torch.Generator,
) -> torch.Tensor:
    """``ipc`` images per class: random distinct real ones (``init=real``) or N(0, 1) noise
    (the normalised space's scale)."""
    c, h, w = x.shape[1:]
    if init == "noise":
        return torch.randn(len(rows) * ipc, c, h, w, generator=gen).to(x.device)
    picks = [r[torch.randperm(len(r), generator=gen)[:ipc].to(r.device)] for r in rows]
    return x[torch.cat(picks)].clone()


def save_grid(syn: SyntheticSet, path: Path, title: str = "") -> None:
    """A PNG with one row per class (its name on the left) and ``ipc`` columns (at most 10)."""
    save_class_grid(syn.pixels(), syn.labels, syn.class_names, path, min(syn.ipc, 10), title)
