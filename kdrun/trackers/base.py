"""Experiment trackers: a registry of optional back ends fed by one job's events.

A job emits four kinds of event: its start (the resolved config as parameters), one row per
epoch of every stage (loss parts, accuracies, lr), its final metrics, and its artifacts (the
distilled student's checkpoint). ``Trackers`` fans each event out to the back ends named in
the ``logger`` config group (several at once, as in lightning-hydra-template's ``logger``
group); with none configured it does nothing. Only rank 0 of a multi-process job tracks.
A back end that fails (disk full, a broken install) is reported once and switched off: a
tracker never fails the training it records.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from kdrun.errors import ConfigError, one_line

log = logging.getLogger("kdrun")


class Tracker(Protocol):
    def start(self, run_name: str, params: Mapping[str, str], tags: Mapping[str, str]) -> None: ...
    def log_epoch(self, stage: str, row: Mapping[str, Any]) -> None: ...
    def log_final(self, metrics: Mapping[str, float]) -> None: ...
    def log_artifact(self, path: Path, folder: str) -> None: ...
    def close(self, status: str) -> None: ...


TRACKERS: dict[str, tuple[Callable[..., Tracker], str]] = {}


def register_tracker(name: str, extra: str) -> Callable[[Callable[..., Tracker]], Any]:
    """Register a back end under the ``logger`` group name; ``extra`` names the pip extra
    that installs its dependency (shown when it is missing)."""

    def deco(factory: Callable[..., Tracker]) -> Callable[..., Tracker]:
        TRACKERS[name] = (factory, extra)
        return factory

    return deco


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys; lists stay values (a config's list is one parameter)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def numeric(d: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers among flattened values (bools and None dropped)."""
    return {
        k: float(v)
        for k, v in d.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def final_metrics(m: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of metrics.json worth a tracker's summary: per-stage accuracies, seconds,
    the KD gain, the world size; not per-class lists nor the history."""
    keep = {k: v for k, v in m.items() if not k.startswith("_") and k not in ("config",)}
    flat = flatten(keep)
    return numeric({k: v for k, v in flat.items() if not k.startswith(("versions.", "command."))})


def epoch_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """An epoch row's numbers except the bookkeeping fields."""
    return numeric({k: v for k, v in row.items() if k not in ("stage", "epoch", "from_store")})


class Trackers:
    """The configured back ends of one job; every call is safe when there are none."""

    def __init__(self, backends: Iterable[tuple[str, Tracker]] = ()) -> None:
        self.backends = list(backends)

    def __bool__(self) -> bool:
        return bool(self.backends)

    def _each(self, what: str, call: Callable[[Tracker], None]) -> None:
        for name, t in list(self.backends):
            try:
                call(t)
            except Exception as e:  # a tracker never fails the job: warn once, drop it
                log.warning(
                    "logger %s failed to %s (%s); it is switched off", name, what, one_line(e)
                )
                self.backends.remove((name, t))

    def start(self, run_name: str, config: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        params = {k: str(v) for k, v in flatten(config).items()}
        self._each("start", lambda t: t.start(run_name, params, tags))

    def log_epoch(self, stage: str, row: Mapping[str, Any]) -> None:
        self._each("log an epoch", lambda t: t.log_epoch(stage, row))

    def log_final(self, metrics: Mapping[str, Any]) -> None:
        flat = final_metrics(metrics)
        self._each("log the final metrics", lambda t: t.log_final(flat))

    def log_artifact(self, path: Path, folder: str = "checkpoints") -> None:
        if path.is_file():
            self._each("store an artifact", lambda t: t.log_artifact(path, folder))

    def close(self, status: str) -> None:
        self._each("close", lambda t: t.close(status))
        self.backends = []


def make_trackers(spec: Mapping[str, Any] | None, enabled: bool = True) -> Trackers:
    """Back ends from the ``logger`` config: {name: {its options}}; none when ``enabled`` is
    False (ranks other than 0). A missing optional dependency is a one-line error."""
    if not spec or not enabled:
        return Trackers()
    out = []
    for name, opts in spec.items():
        if opts is None:  # `~logger.mlflow` style removal leaves None
            continue
        if name not in TRACKERS:
            raise ConfigError(
                f"logger.{name} is unknown; choose from {', '.join(sorted(TRACKERS))}"
            )
        factory, extra = TRACKERS[name]
        try:
            out.append((name, factory(**dict(opts))))
        except ImportError as e:
            raise ConfigError(
                f"logger={name} needs an extra ({one_line(e)}): pip install 'kdrun[{extra}]'"
            ) from None
        except TypeError as e:
            raise ConfigError(
                f"logger.{name}: {one_line(e)}; see conf/logger/{name}.yaml"
            ) from None
    return Trackers(out)
