"""Data sets: the registry, the built-in loaders, and the in-memory bundle the loop trains on.

Importing this package registers every built-in data set.
"""

from kdrun.data import builtin, external, kg, mfeat, synthetic, text  # noqa: F401  (registration)
from kdrun.data.builtin import read_idx
from kdrun.data.bundle import UNLABELLED, DataBundle, augment_batch, batch_indices, load_data
from kdrun.data.external import LoadHints, parse_size
from kdrun.data.registry import DATASETS, DatasetSpec, RawData, register_dataset
from kdrun.data.text import TextData, bits_per_byte, load_text_data

__all__ = [
    "DATASETS",
    "DataBundle",
    "DatasetSpec",
    "LoadHints",
    "RawData",
    "TextData",
    "UNLABELLED",
    "augment_batch",
    "batch_indices",
    "bits_per_byte",
    "load_data",
    "load_text_data",
    "parse_size",
    "read_idx",
    "register_dataset",
]
