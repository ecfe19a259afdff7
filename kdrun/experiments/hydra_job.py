"""The running Hydra job's own config (hydra.*): read here, in the experiments layer, and
handed down (the engine and everything below it never read Hydra's global state)."""

from __future__ import annotations

from typing import Any

from hydra.core.hydra_config import HydraConfig


def current_hydra_config() -> Any | None:
    """The running Hydra job's own config (hydra.*), None outside a Hydra job."""
    return HydraConfig.get() if HydraConfig.initialized() else None
