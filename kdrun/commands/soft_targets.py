"""Soft targets and temperature: the "dark knowledge" a softmax at T > 1 reveals.

``kdrun softmax`` prints the softmax of given logits at several temperatures with the entropy
per T; ``kdrun dark-knowledge RUN_DIR`` shows a trained teacher's soft targets for a few test
images and how entropy and non-target mass grow with T. The experiment ``soft_targets`` writes
the same figures for the teacher of its own run (analysis ``soft_targets``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from kdrun.config import DatasetConfig, ModelConfig
from kdrun.data import load_data
from kdrun.errors import CheckpointError
from kdrun.models import build_model

DEFAULT_TEMPERATURES = [1.0, 2.0, 3.0, 5.0, 10.0, 20.0]
# Hinton's classic illustration: a horse image, logits for cat, dog, donkey, horse.
CLASSIC_LOGITS = [-5.0, 2.0, 7.0, 9.0]
CLASSIC_NAMES = ["cat", "dog", "donkey", "horse"]


def softmax_T(logits: torch.Tensor, T: float) -> torch.Tensor:
    """Softmax over the last dim at temperature T, in float64 so tiny probabilities survive."""
    return torch.softmax(logits.double() / T, dim=-1)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats over the last dim (0 * log 0 = 0)."""
    return -(p * torch.log(p.clamp_min(1e-300))).sum(-1)


def softmax_table(logits: Sequence[float], temps: Sequence[float]) -> list[dict[str, Any]]:
    """One row per T: the probabilities and their entropy (nats)."""
    z = torch.tensor(list(logits), dtype=torch.float64)
    rows = []
    for T in temps:
        p = softmax_T(z, T)
        rows.append({"T": float(T), "probs": p.tolist(), "entropy": float(entropy(p))})
    return rows


def _fmt_p(p: float) -> str:
    return f"{p:.4f}" if p >= 5e-5 else f"{p:.1e}"


def render_softmax_table(rows: list[dict[str, Any]], names: Sequence[str], title: str) -> Table:
    t = Table(title=title, title_style="bold")
    t.add_column("T", justify="right")
    for n in names:
        t.add_column(n, justify="right")
    t.add_column("entropy (nats)", justify="right")
    for r in rows:
        t.add_row(f"{r['T']:g}", *(_fmt_p(p) for p in r["probs"]), f"{r['entropy']:.3f}")
    return t


# --------------------------------------------------------------------------- a trained model


@torch.no_grad()
def temperature_curves(
    logits: torch.Tensor, y: torch.Tensor, temps: Sequence[float]
) -> dict[str, list[float]]:
    """Mean over samples, per T: entropy (nats), non-target mass (1 - p of the true class) and
    the largest probability among the wrong classes (the most visible dark knowledge)."""
    out: dict[str, list[float]] = {
        "temperatures": [float(t) for t in temps],
        "mean_entropy": [],
        "non_target_mass": [],
        "max_non_target_prob": [],
    }
    y = y.to(logits.device)
    for T in temps:
        p = softmax_T(logits, T)
        p_true = p.gather(1, y[:, None]).squeeze(1)
        wrong = p.scatter(1, y[:, None], 0.0)
        out["mean_entropy"].append(float(entropy(p).mean()))
        out["non_target_mass"].append(float((1 - p_true).mean()))
        out["max_non_target_prob"].append(float(wrong.max(1).values.mean()))
    return out


def pick_examples(y: torch.Tensor, n: int) -> list[int]:
    """The first test image of each class, in class order, then further ones: deterministic."""
    y = y.cpu()
    first = [int(torch.nonzero(y == c)[0]) for c in torch.unique(y).tolist()]
    rest = [i for i in range(len(y)) if i not in set(first)]
    return (first + rest)[:n]


def _image(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> np.ndarray:
    img = (x.cpu() * std.cpu()[:, None, None] + mean.cpu()[:, None, None]).clamp(0, 1)
    return img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_examples(
    data, logits: torch.Tensor, idx: list[int], temps: Sequence[float], path: Path, who: str
) -> None:
    """One row per test image: the image with its hard label, and its soft targets per T."""
    plt = _plt()
    names = data.class_names
    k = len(names)
    fig, axes = plt.subplots(
        len(idx),
        2,
        figsize=(11, 1.9 * len(idx)),
        squeeze=False,
        gridspec_kw={"width_ratios": [1, 6]},
    )
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(temps)))
    width = 0.8 / len(temps)
    for row, i in enumerate(idx):
        ax_img, ax = axes[row]
        ax_img.imshow(_image(data.x_test[i], data.mean, data.std), cmap="gray")
        ax_img.set_title(f"label: {names[int(data.y_test[i])]}", fontsize=9)
        ax_img.axis("off")
        for j, T in enumerate(temps):
            p = softmax_T(logits[i], T).cpu().numpy()
            ax.bar(
                np.arange(k) + (j - (len(temps) - 1) / 2) * width,
                p,
                width,
                color=colors[j],
                label=f"T={T:g}",
            )
        ax.set_ylim(0, 1)
        ax.set_xticks(np.arange(k))
        ax.set_xticklabels(names if row == len(idx) - 1 else [], fontsize=8, rotation=20)
        ax.set_ylabel("p", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0][1].legend(ncol=len(temps), fontsize=7, loc="upper right")
    fig.suptitle(f"{who}'s soft targets at several temperatures ({data.name} test images)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_curves(
    curves: dict[str, dict[str, list[float]]], num_classes: int, path: Path, title: str
) -> None:
    """Mean entropy and mean non-target mass vs T over the test set, one line per model."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for who, c in curves.items():
        a.plot(c["temperatures"], c["mean_entropy"], marker="o", ms=3, label=who)
        b.plot(c["temperatures"], c["non_target_mass"], marker="o", ms=3, label=who)
    a.axhline(math.log(num_classes), ls="--", c="gray", lw=1, label=f"log {num_classes} (uniform)")
    b.axhline(1 - 1 / num_classes, ls="--", c="gray", lw=1, label="uniform")
    for ax, lab in ((a, "mean entropy (nats)"), (b, "mean non-target mass")):
        ax.set_xscale("log")
        ax.set_xlabel("temperature T")
        ax.set_ylabel(lab)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def dense_temperatures(temps: Sequence[float]) -> list[float]:
    """The requested temperatures plus a log-spaced grid between them, for smooth curves."""
    lo, hi = min(temps), max(temps)
    grid = np.geomspace(lo, hi, 25) if hi > lo else np.array([lo])
    return sorted({round(float(t), 4) for t in [*temps, *grid]})


def examples_table(data, logits: torch.Tensor, i: int, temps: Sequence[float], who: str) -> Table:
    rows = softmax_table(logits[i].tolist(), temps)
    label = data.class_names[int(data.y_test[i])]
    return render_softmax_table(rows, data.class_names, f"{who} · test image {i} · label {label}")


def dark_knowledge(
    data,
    logits: dict[str, torch.Tensor],
    temps: Sequence[float],
    n_examples: int,
    out_dir: Path,
    console: Console | None = None,
) -> dict[str, Any]:
    """Figures and numbers for models' test logits (``{"teacher": logits, ...}``); the first
    model's soft targets are shown per example. Returns the metrics object."""
    y = data.y_test
    first = next(iter(logits))
    idx = pick_examples(y, n_examples)
    curves = {who: temperature_curves(z, y, temps) for who, z in logits.items()}
    dense = {who: temperature_curves(z, y, dense_temperatures(temps)) for who, z in logits.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = ["entropy_vs_T.png"]
    if idx:
        figures.insert(0, f"{first}_soft_targets.png")
        plot_examples(data, logits[first], idx, temps, out_dir / figures[0], first)
    plot_curves(
        dense,
        data.num_classes,
        out_dir / "entropy_vs_T.png",
        f"{data.name}: soft targets over the test set",
    )
    if console is not None:
        t = Table(title=f"{data.name}: mean over the test set", title_style="bold")
        t.add_column("T", justify="right")
        for who in curves:
            t.add_column(f"{who} entropy", justify="right")
            t.add_column(f"{who} non-target mass", justify="right")
        for j, T in enumerate(temps):
            cells = []
            for c in curves.values():
                cells += [f"{c['mean_entropy'][j]:.3f}", f"{c['non_target_mass'][j]:.3f}"]
            t.add_row(f"{T:g}", *cells)
        console.print(t)
        for i in idx[:3]:
            console.print(examples_table(data, logits[first], i, temps, first))
    examples = [
        {
            "index": i,
            "label": data.class_names[int(y[i])],
            "soft_targets": {f"{T:g}": softmax_T(logits[first][i], T).tolist() for T in temps},
        }
        for i in idx
    ]
    return {
        "temperatures": [float(t) for t in temps],
        **curves,
        "examples": examples,
        "class_names": list(data.class_names),
        "figures": figures,
    }


# --------------------------------------------------------------------------- loading


def load_trained(path: Path, role: str = "teacher"):
    """(config, data bundle, model) for a run directory or a store artifact directory."""
    if (path / "meta.json").is_file() and (path / "payload.pt").is_file():  # a store artifact
        meta = json.loads((path / "meta.json").read_text())
        spec = meta.get("spec", {})
        if "model" not in spec or "data" not in spec:
            raise CheckpointError(f"{path} is not a model artifact (kind {meta.get('kind')})")
        ds = {k: v for k, v in spec["data"].items() if k in DatasetConfig.__dataclass_fields__}
        ds_cfg = OmegaConf.merge(OmegaConf.structured(DatasetConfig), ds)
        m_cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), spec["model"])
        weights = path / "payload.pt"
    else:
        cfg_file = path / ".hydra" / "config.yaml"
        if cfg_file.is_file():
            cfg = OmegaConf.load(cfg_file)
        elif (path / "metrics.json").is_file():
            cfg = OmegaConf.create(json.loads((path / "metrics.json").read_text())["config"])
        else:
            raise CheckpointError(
                f"{path} is neither a kdrun run directory (.hydra/config.yaml or metrics.json) "
                f"nor a store artifact (meta.json); give a run directory"
            )
        ds_cfg = OmegaConf.merge(OmegaConf.structured(DatasetConfig), cfg.dataset)
        m_cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), cfg[role])
        weights = path / "checkpoints" / f"{role}.pt"
    if not weights.is_file():
        raise CheckpointError(f"{weights} does not exist; has the run finished?")
    data = load_data(ds_cfg, "cpu")
    model = build_model(m_cfg, data.in_shape, data.num_classes)
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{weights} does not fit {m_cfg.name} ({first})") from None
    return data, model.eval()
