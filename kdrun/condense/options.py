"""DC's loop sizes per ipc; the typed options themselves live in kdrun.config."""

from __future__ import annotations

from kdrun.config import CondenseConfig

__all__ = ["DC_LOOPS", "CondenseConfig", "dc_loops"]

# DC's get_loops (VICO-UoE/DatasetCondensation utils.py): (outer_loop, inner_loop) per ipc.
DC_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def dc_loops(ipc: int, outer: int = 0, inner: int = 0) -> tuple[int, int]:
    """The explicit loops, else DC's for the nearest tabulated ipc at or below this one."""
    key = max((k for k in DC_LOOPS if k <= ipc), default=1)
    d_outer, d_inner = DC_LOOPS[key]
    return outer or d_outer, inner or d_inner
