"""The data set registry: a loader per name, returning raw arrays (kdrun.data.builtin fills it)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class RawData:
    """What a loader returns: images in [0, 1] as float32 (N, C, H, W) and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    # A loader whose classes depend on its file (dataset=synthetic) names them here; None =
    # the registered class names.
    class_names: list[str] | None = None
    # A loader whose content a name does not fix (dataset=synthetic: which file) fingerprints
    # it here, so stored models trained on two different files never collide.
    fingerprint: str | None = None
    # Every file the loader read, by a name relative to where it looked (so the same bytes
    # under another root are the same data): kdrun.store.fingerprint.data_fingerprint hashes
    # their content for the store keys.
    sources: dict[str, str] | None = None
    # A data set that holds each example in several forms (kdrun.data.views): its named views,
    # name -> (x_train, x_test) shaped like x_train/x_test, the rows in the same order; the
    # first is the data set's own view and is what x_train/x_test hold.
    views: dict[str, tuple[np.ndarray, np.ndarray]] | None = None


@dataclass
class DatasetSpec:
    load: Callable[..., RawData]
    num_classes: int  # 0: known only once loaded (the user's own data)
    class_names: list[str]
    task: str = "classify"  # the kdrun.tasks entry that knows how to train on it
    # The user's own data (kdrun.data.external): load(cfg, hints) returns an ExternalRaw.
    external: bool = False
    pixel_max: float = 255.0  # raw pixel value that maps to 1.0 (the export's preprocessing)
    # The data set's own config fields (a dataclass), given as dataset.options.KEY and checked
    # against it like the schema's (kdrun.config.options); None: it takes no options.
    options: type | None = None
    # The names of the data set's own views (RawData.views), its default first; () = one
    # view, ``full`` (kdrun.data.views)
    views: tuple[str, ...] = ()


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(
    name: str,
    num_classes: int,
    class_names: list[str],
    task: str = "classify",
    external: bool = False,
    pixel_max: float = 255.0,
    options: type | None = None,
    views: tuple[str, ...] = (),
):
    def deco(fn: Callable[..., RawData]) -> Callable[..., RawData]:
        DATASETS[name] = DatasetSpec(
            fn, num_classes, class_names, task, external, pixel_max, options, views
        )
        return fn

    return deco


def default_data_root() -> Path:
    """Where downloads go when dataset.root is unset ($KDRUN_DATA overrides)."""
    return Path(os.environ.get("KDRUN_DATA", Path.home() / ".cache" / "kdrun" / "data"))


def system_data_root() -> Path:
    """Distribution-installed data sets, e.g. Debian's dataset-fashion-mnist."""
    return Path(os.environ.get("KDRUN_SYSTEM_DATASETS", "/usr/share/datasets"))
