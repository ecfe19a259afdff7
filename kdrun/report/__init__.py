"""What a person sees: the run table, progress bars and log lines, history.csv."""

from kdrun.report.run import (
    HISTORY_COLUMNS,
    Reporter,
    fmt_acc,
    results_table,
    round_floats,
    write_history,
)

__all__ = [
    "HISTORY_COLUMNS",
    "Reporter",
    "fmt_acc",
    "results_table",
    "round_floats",
    "write_history",
]
