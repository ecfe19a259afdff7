"""``dataset=synthetic dataset.path=RUN_DIR/synthetic.pt``: a condensed training set as data.

The training split is the synthetic images (written by ``kdrun experiment=condense``, in the
normalised space of their source data set: un-normalised here, then normalised again like any
data set); the test split is the source data set's own, so numbers stay comparable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdrun.data.registry import DATASETS, RawData, register_dataset
from kdrun.errors import DataError
from kdrun.store import CorruptArtifact, load_weights, sha256_file

KEYS = ("images", "labels", "mean", "std", "dataset")


# The messages below keep their hand wrapping (format-skip markers): the data loaders are
# being edited in parallel, and reformatting these lines would only collide with that work.
def read_synthetic(path: Path) -> dict:
    """The payload of a synthetic.pt, checked; a one-line DataError otherwise."""
    if not path.is_file():
        raise DataError(f"dataset.path={path} does not exist; give the synthetic.pt of a "
                        f"`kdrun experiment=condense` run directory")  # fmt: skip
    try:
        p = load_weights(path)
    except (CorruptArtifact, OSError, EOFError) as e:
        raise DataError(f"dataset.path={path} cannot be read ({e}); give a synthetic.pt "
                        f"written by kdrun experiment=condense") from None  # fmt: skip
    if not isinstance(p, dict) or any(k not in p for k in KEYS):
        lacks = ", ".join(KEYS)
        raise DataError(f"dataset.path={path} is not a synthetic set (it lacks {lacks}); "
                        f"give a synthetic.pt from experiment=condense")  # fmt: skip
    if p["dataset"] not in DATASETS or p["dataset"] == "synthetic":
        raise DataError(f"{path} was condensed from unknown data set '{p['dataset']}'")
    return p


# 0 classes: counted when the file is loaded (as for the user's own data).
@register_dataset("synthetic", 0, [], pixel_max=1.0)
def load_synthetic(cfg) -> RawData:
    if not cfg.path:
        raise DataError("dataset=synthetic needs dataset.path=RUN_DIR/synthetic.pt (written by "
                        "kdrun experiment=condense)")  # fmt: skip
    path = Path(cfg.path).expanduser()
    p = read_synthetic(path)
    source = DATASETS[p["dataset"]].load(cfg)  # its test split; root/download as configured
    shape = (1, -1, 1, 1)
    x = (p["images"].float() * p["std"].view(shape) + p["mean"].view(shape)).numpy()
    y = p["labels"].long().numpy()
    names = list(p.get("class_names") or [str(c) for c in range(int(y.max()) + 1)])
    read = {"synthetic.pt": str(path)}  # and the source data set's files (its test split)
    read.update({f"source/{k}": v for k, v in (source.sources or {}).items()})
    return RawData(x.astype(np.float32), y.astype(np.int64), source.x_test, source.y_test, names,
                   fingerprint=sha256_file(path), sources=read)  # fmt: skip
