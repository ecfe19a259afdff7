"""Data sets: the registry, the built-in loaders, and the in-memory bundle the loop trains on.

Importing this package registers every built-in data set.
"""

from kdrun.data import builtin  # noqa: F401  (registration)
from kdrun.data.builtin import read_idx
from kdrun.data.bundle import DataBundle, augment_batch, batch_indices, load_data
from kdrun.data.registry import DATASETS, DatasetSpec, RawData, register_dataset

__all__ = [
    "DATASETS",
    "DataBundle",
    "DatasetSpec",
    "RawData",
    "augment_batch",
    "batch_indices",
    "load_data",
    "read_idx",
    "register_dataset",
]
