"""Test data written by the tests themselves (never downloaded): an image folder of PNGs,
an .npz, a user module outside the package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write_image_folder(
    root: Path,
    per_class: int = 8,
    test_per_class: int = 3,
    size: int = 16,
    rgb: bool = True,
    classes: int = 4,
    offset: int = 0,
) -> Path:
    """The bundled digits upsampled to size x size PNGs (RGB: the digit in red and blue, its
    negative in green), ``per_class`` train / ``test_per_class`` test images per class."""
    d = load_digits()
    for c in range(classes):
        idx = np.flatnonzero(d.target == c)[offset:]
        for split, rows in (
            ("train", idx[:per_class]),
            ("test", idx[per_class : per_class + test_per_class]),
        ):
            for i in rows:
                img = (d.images[i] * 16).clip(0, 255).astype(np.uint8)
                arr = np.stack([img, 255 - img, img], -1) if rgb else img
                p = root / split / f"digit_{c}" / f"{i:04d}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR).save(p)
    return root


def write_npz(path: Path, n: int = 120, features: int = 6, classes: int = 3, seed: int = 0):
    """A separable tabular problem: class c shifts feature c."""
    rng = np.random.default_rng(seed)

    def split(m: int):
        y = rng.integers(0, classes, m)
        x = rng.normal(size=(m, features)).astype(np.float32)
        x[np.arange(m), y] += 3.0
        return x, y

    (xtr, ytr), (xte, yte) = split(n), split(n // 3)
    np.savez(
        path,
        x_train=xtr,
        y_train=ytr,
        x_test=xte,
        y_test=yte,
        class_names=np.array([f"class_{i}" for i in range(classes)]),
    )
    return path


def write_digits_npz(path: Path) -> Path:
    """The bundled digits as uint8 (N, 8, 8) images in an .npz, with a validation split."""
    d = load_digits()
    x = (d.images * 16).clip(0, 255).astype(np.uint8)
    y = d.target.astype(np.int64)
    np.savez(
        path,
        x_train=x[:1000],
        y_train=y[:1000],
        x_val=x[1000:1200],
        y_val=y[1000:1200],
        x_test=x[1200:],
        y_test=y[1200:],
    )
    return path


USER_MODULE = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """A user's own network: takes the class count and input channels, plus its own knob."""

    def __init__(self, num_classes, in_channels, width=8, act="relu"):
        super().__init__()
        act_cls = {"relu": nn.ReLU, "gelu": nn.GELU}[act]
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), act_cls(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), act_cls(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.body(x)).flatten(1))
'''


def write_user_module(d: Path, name: str = "usernets") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.py").write_text(USER_MODULE)
    return d
