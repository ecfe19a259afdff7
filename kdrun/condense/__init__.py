"""Dataset condensation: learn a few synthetic images per class that train a network nearly as
well as the whole training split (DC, DSA, DM)."""

from kdrun.condense.augment import AUGMENTS, dsa, parse_strategy
from kdrun.condense.loop import CondenseResult, condense_images
from kdrun.condense.losses import gradient_match_loss, layer_gradient_distance, mean_embedding_loss
from kdrun.condense.matching import CONDENSERS, Condenser, embedder, register_condenser
from kdrun.condense.options import CondenseConfig, dc_loops
from kdrun.condense.synthetic import (
    SyntheticSet,
    class_rows,
    initial_images,
    save_grid,
)

__all__ = [
    "AUGMENTS",
    "CONDENSERS",
    "CondenseConfig",
    "CondenseResult",
    "Condenser",
    "SyntheticSet",
    "class_rows",
    "condense_images",
    "dc_loops",
    "dsa",
    "embedder",
    "gradient_match_loss",
    "initial_images",
    "layer_gradient_distance",
    "mean_embedding_loss",
    "parse_strategy",
    "register_condenser",
    "save_grid",
]
