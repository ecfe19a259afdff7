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


def os_error_message(e: OSError) -> str | None:
    """One actionable line for the file-system failures a long sweep meets; None if unknown."""
    import errno

    where = e.filename if e.filename is not None else "a file"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"no space left on device while writing {where}; free some space (or point "
            f"store_dir / hydra.run.dir elsewhere) and rerun the same command to resume: "
            f"results written before are intact"
        )
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f"cannot write {where} ({e.strerror}); choose a writable location "
            f"(hydra.run.dir=DIR, hydra.sweep.dir=DIR, store_dir=DIR)"
        )
    if e.errno in (errno.ENOTDIR, errno.EEXIST) and e.filename is not None:
        return (
            f"cannot create directory {where}: a part of that path is a file; choose another "
            f"location (hydra.run.dir=DIR, hydra.sweep.dir=DIR, store_dir=DIR)"
        )
    return None


def find_os_error(e: BaseException | None) -> OSError | None:
    """The OSError behind ``e`` (logging and Hydra wrap it in other exceptions)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno is not None:
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's text squeezed onto one line (third-party messages span several)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ExitStatus:
    """The exit status of the whole command: the worst of its jobs and of the sweep summary.

    Hydra returns none of its own, so the CLI resets it, the jobs and the end-of-sweep callback
    raise it, and the CLI returns it. It lives here, below both, so neither imports the other.
    """

    def __init__(self) -> None:
        self.code = 0

    def raise_to(self, code: int) -> None:
        self.code = max(self.code, code)

    def reset(self) -> None:
        self.code = 0


EXIT = ExitStatus()
