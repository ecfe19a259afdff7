"""Errors that reach the user as one actionable line (no traceback unless debug is on)."""


class KdrunError(Exception):
    """Base class: the message is shown as-is, so it must name the problem and the fix."""

    exit_code = 2


class ConfigError(KdrunError):
    """A configuration value is invalid."""


class DataError(KdrunError):
    """Data files are missing, unreadable or do not fit."""


class CheckpointError(KdrunError):
    """A checkpoint or stored artifact is missing, corrupt or does not fit the model."""


class TrainingError(KdrunError):
    """Training diverged (NaN/inf loss) or otherwise could not continue."""

    exit_code = 3


class Interrupted(KdrunError):
    """SIGINT/SIGTERM: the run stopped cleanly at a batch boundary."""

    exit_code = 130


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's text squeezed onto one line (third-party messages span several)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
