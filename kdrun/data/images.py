"""Pictures of images by class (synthetic sets, generated images)."""

from __future__ import annotations

from pathlib import Path

import torch


def save_class_grid(
    pixels: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str] | None,
    path: Path,
    per_class: int,
    title: str = "",
) -> None:
    """Images in [0, 1] (N, C, H, W), one row per class, up to ``per_class`` columns; a class
    with fewer images leaves its row short."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cls = len(class_names) if class_names else int(labels.max()) + 1
    cols = max(1, per_class)
    fig, axes = plt.subplots(n_cls, cols, figsize=(cols * 0.9 + 1.2, n_cls * 0.9), squeeze=False)
    for c in range(n_cls):
        imgs = pixels[labels.cpu() == c]
        for j in range(cols):
            ax = axes[c][j]
            ax.axis("off")
            if j < len(imgs):
                img = imgs[j].permute(1, 2, 0).numpy()
                ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=1)
        name = class_names[c] if class_names else str(c)
        axes[c][0].text(
            -0.1, 0.5, name, transform=axes[c][0].transAxes, ha="right", va="center", fontsize=7
        )
    if title:
        fig.suptitle(title, fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
