"""Published numbers printed beside a condensation run, and its results table.

ConvNet (3 x 128) test accuracy (%) at 1 / 10 / 50 images per class. Sources: DC (Zhao et al.,
ICLR 2021) and DSA (Zhao & Bilen, ICML 2021) papers / VICO-UoE/DatasetCondensation README;
DM (Zhao & Bilen, WACV 2023); random real images on CIFAR-10 from DC-BENCH
(justincui03/dcbench). Their protocol: 20 evaluation nets trained 300 (DC) or 1000 (DM) epochs.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

ANCHORS: dict[str, dict[str, dict[int, float]]] = {
    "mnist": {"dc": {1: 91.7, 10: 97.4, 50: 98.8}, "dsa": {1: 88.7, 10: 97.8, 50: 99.2}},
    "fashion_mnist": {"dc": {1: 70.5, 10: 82.3, 50: 83.6}, "dsa": {1: 70.6, 10: 84.6, 50: 88.7}},
    "cifar10": {
        "dc": {1: 28.3, 10: 44.9, 50: 53.9},
        "dsa": {1: 28.8, 10: 52.1, 50: 60.6},
        "dm": {1: 26.0, 10: 48.9, 50: 63.0},
        "random real (DC-BENCH)": {1: 15.4, 10: 31.0, 50: 50.6},
    },
}


def anchors_for(dataset: str, ipc: int) -> dict[str, float]:
    """Published accuracies (%) for this data set at this ipc, by method; {} if none."""
    return {m: v[ipc] for m, v in ANCHORS.get(dataset, {}).items() if ipc in v}


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.2f} ± {100 * (std or 0):.2f}%"


def synthetic_vs_real(ev: dict[str, Any]) -> str:
    """'synthetic − random real: +13.02 points, 95% CI [+9.1, +16.9] over 5 paired
    evaluation nets: better'."""
    if ev.get("diff") is None:
        return "synthetic − random real: -"
    ci = ev.get("diff_ci")
    ci_text = f", 95% CI [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]" if ci else ""
    return (
        f"synthetic − random real: {100 * ev['diff']:+.2f} points{ci_text} over {ev['n']} "
        f"paired evaluation nets: {ev['verdict']}"
    )


def condense_table(m: dict[str, Any]) -> Table:
    """One row per training set of the evaluation net, then the published anchors."""
    c = m["condense"]
    t = Table(
        title=f"kdrun condense · {m['dataset']} · {c['method']} · ipc={c['ipc']} · "
        f"eval net {c['eval_model']} x {c['eval_seeds']} seeds",
        title_style="bold",
    )
    for col in ("training set of the evaluation net", "images", "test acc (mean ± std)"):
        t.add_column(col, justify="left" if col.startswith("training") else "right")
    n = c["ipc"] * c["num_classes"]
    t.add_row(
        f"synthetic ({c['method']}{'+dsa' if c['dsa'] else ''})",
        str(n),
        _pm(c["synthetic_acc"], c["synthetic_acc_std"]),
    )
    if c.get("synthetic_soft_acc") is not None:
        t.add_row(
            f"synthetic + teacher soft labels (T={m['T']:g})",
            str(n),
            _pm(c["synthetic_soft_acc"], c["synthetic_soft_acc_std"]),
        )
    t.add_row("random real", str(n), _pm(c["random_real_acc"], c["random_real_acc_std"]))
    if c.get("full_data_acc") is not None:
        t.add_row("full training split", f"{c['train_size']:,}", _pm(c["full_data_acc"], None))
    pub = c.get("published") or {}
    if pub:
        t.caption = f"published (ConvNet-128, ipc={c['ipc']}): " + ", ".join(
            f"{k} {v:.1f}%" for k, v in pub.items()
        )
    else:
        t.caption = f"no published ConvNet number for {m['dataset']} at ipc={c['ipc']}"
    if c.get("evidence"):
        t.caption = synthetic_vs_real(c["evidence"]) + "\n" + t.caption
    t.caption_justify = "left"
    return t
