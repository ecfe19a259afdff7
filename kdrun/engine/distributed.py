"""One job on several processes: torch.distributed set up from torchrun's or Slurm's environment.

kdrun never spawns processes itself. ``torchrun --nproc_per_node=N -m kdrun ...`` sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; under Slurm (``srun`` or the submitit
launcher with ``tasks_per_node=N``) every task has SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID,
and the rendezvous address is the first host of SLURM_JOB_NODELIST (the convention of
submitit's and Lightning's Slurm environments). Without either, a job is one process and every
helper here is a no-op, so the single-process path pays nothing.

Data parallelism keeps ``batch_size`` global: every rank draws the same permutation from the same
seeded generator and takes its slice of each global batch (``Dist.shard``), so N processes see
the same samples per optimiser step as one process. Evaluation is sharded by rows and gathered,
so every rank reports the same numbers.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kdrun.errors import ConfigError
from kdrun.store import Artifact, ArtifactStore, content_key

BACKENDS = ("nccl", "gloo")
# A rank that waits longer than this at a collective is taken as lost: the job fails with one
# line instead of hanging until Slurm's time limit.
DEFAULT_TIMEOUT_S = 1800


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job, read from the launcher's environment variables."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str | None = None
    master_port: str | None = None
    source: str = "single"  # single | torchrun | slurm


def _int(environ: Mapping[str, str], key: str) -> int:
    try:
        return int(environ[key])
    except ValueError:
        raise ConfigError(
            f"environment variable {key}={environ[key]!r} is not an integer; "
            f"launch with torchrun or srun, which set it"
        ) from None


def first_host(nodelist: str) -> str:
    """The first host name of a Slurm node list: 'gpu[003-004,9],cpu1' -> 'gpu003'.

    (Slurm compresses consecutive names into bracketed ranges; zero padding is kept.)
    """
    m = re.match(r"\s*([^,\[\s]+)(?:\[([^\]]+)\])?", nodelist)
    if not m or not m.group(1):
        raise ConfigError(f"SLURM_JOB_NODELIST={nodelist!r} names no host; set MASTER_ADDR")
    prefix, ranges = m.group(1), m.group(2)
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def slurm_port(job_id: str | None) -> str:
    """A rendezvous port every task of one Slurm job agrees on without talking: derived from
    the job id (as submitit does) so two jobs sharing a node rarely collide."""
    jid = int(re.sub(r"\D", "", job_id or "") or 0)
    return str(15000 + jid % 20000)


def env_from(environ: Mapping[str, str] | None = None) -> DistEnv:
    """This process's place in the job: torchrun's variables first, then Slurm's.

    A Slurm allocation with one task (the usual sweep job) is a single process; so is a shell
    inside ``salloc`` where SLURM_PROCID is unset (only ``srun`` starts the tasks).
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=_int(env, "RANK"),
            world_size=_int(env, "WORLD_SIZE"),
            local_rank=_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
            master_addr=env.get("MASTER_ADDR"),
            master_port=env.get("MASTER_PORT"),
            source="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and _int(env, "SLURM_NTASKS") > 1:
        nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
        addr = env.get("MASTER_ADDR") or (first_host(nodes) if nodes else None)
        if addr is None:
            raise ConfigError("under Slurm but SLURM_JOB_NODELIST is unset; set MASTER_ADDR")
        return DistEnv(
            rank=_int(env, "SLURM_PROCID"),
            world_size=_int(env, "SLURM_NTASKS"),
            local_rank=_int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
            master_addr=addr,
            master_port=env.get("MASTER_PORT") or slurm_port(env.get("SLURM_JOB_ID")),
            source="slurm",
        )
    return DistEnv()


def pick_backend(device: torch.device, override: str = "auto") -> str:
    """nccl for CUDA, gloo for the CPU; ``runtime.dist_backend`` overrides, checked here."""
    if override in ("", "auto"):
        return "nccl" if device.type == "cuda" else "gloo"
    if override not in BACKENDS:
        raise ConfigError(f"runtime.dist_backend={override} is unknown; use auto, nccl or gloo")
    if override == "nccl" and device.type != "cuda":
        raise ConfigError(
            f"runtime.dist_backend=nccl needs CUDA but device is {device}; use "
            f"runtime.dist_backend=gloo (or auto)"
        )
    if override == "nccl" and not tdist.is_nccl_available():
        raise ConfigError("runtime.dist_backend=nccl but this torch has no NCCL; use gloo")
    return override


def local_device(device: torch.device, env: DistEnv) -> torch.device:
    """One GPU per process: 'cuda' becomes cuda:LOCAL_RANK (and is made current, so kernels
    and NCCL never land on GPU 0 by accident); an explicit cuda:N is kept (one GPU, one rank)."""
    if device.type != "cuda":
        return device
    if device.index is None and env.world_size > 1:
        device = torch.device("cuda", env.local_rank)
    if device.index is not None:
        torch.cuda.set_device(device)
    return device


class Dist:
    """The process group of one job (or a single process) and the few collectives kdrun uses.

    ``sync_bn``: whether training stages convert the student's BatchNorm to SyncBatchNorm.
    """

    def __init__(
        self, env: DistEnv | None = None, backend: str = "none", sync_bn: bool = False
    ) -> None:
        self.env = env or DistEnv()
        self.backend = backend if self.env.world_size > 1 else "none"
        self.sync_bn = sync_bn and self.env.world_size > 1

    # ---- identity ---------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self.env.world_size > 1

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        return self.env.rank == 0

    def tag(self) -> str:
        """'[rank 1/4] ' in a multi-process job, '' otherwise: prefixes error lines."""
        return rank_tag(self.env)

    def place(self, device: torch.device) -> torch.device:
        """This rank's device for a job configured on ``device`` (cuda -> cuda:LOCAL_RANK)."""
        return local_device(device, self.env)

    # ---- collectives --------------------------------------------------------------------------
    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.enabled:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=src)
        return box[0]

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of ``t`` over ranks (in place, and returned)."""
        if self.enabled:
            tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return t

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if it is True on any: e.g. a stop requested on one rank."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)], device=device)
        return bool(self.all_reduce_sum(t).item())

    def all_gather_cat(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``t`` along dim 0 in rank order; sizes may differ by rank."""
        if not self.enabled:
            return t
        n = torch.tensor([t.shape[0]], device=t.device, dtype=torch.long)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        tdist.all_gather(sizes, n)
        counts = [int(s) for s in sizes]
        top = max(counts)
        padded = t.new_zeros((top, *t.shape[1:]))
        padded[: t.shape[0]] = t
        bufs = [torch.empty_like(padded) for _ in range(self.world_size)]
        tdist.all_gather(bufs, padded.contiguous())
        return torch.cat([b[:c] for b, c in zip(bufs, counts, strict=True)])

    def broadcast_(self, tensors: list[torch.Tensor], src: int = 0) -> None:
        """Overwrite ``tensors`` with rank ``src``'s values (e.g. BatchNorm statistics)."""
        if self.enabled:
            for t in tensors:
                tdist.broadcast(t, src=src)

    # ---- data ---------------------------------------------------------------------------------
    def bounds(self, n: int) -> tuple[int, int]:
        """This rank's [start, stop) of n rows: near-equal contiguous slices, rank order."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a global batch (all ranks hold the same ``idx``)."""
        if not self.enabled:
            return idx
        start, stop = self.bounds(len(idx))
        return idx[start:stop]

    def sharded_rows(
        self, n: int, compute: Callable[[int, int], torch.Tensor], device: torch.device
    ) -> torch.Tensor:
        """``compute(start, stop)`` for this rank's rows of 0..n, gathered on every rank in
        row order: sharded evaluation whose result is the same everywhere."""
        start, stop = self.bounds(n) if self.enabled else (0, n)
        part = compute(start, stop).to(device)
        return self.all_gather_cat(part)

    def loss_scale(self, local_n: int, global_n: int) -> float:
        """Factor on a rank's mean loss so that DDP's average of gradients over ranks equals
        the gradient of the global batch's mean (slices may differ in size by one row)."""
        if not self.enabled or global_n == 0:
            return 1.0
        return local_n * self.world_size / global_n


def rank_tag(env: DistEnv | None = None) -> str:
    """'[rank 1/4] ' in a multi-process job (known from the environment before any process
    group exists), '' otherwise."""
    env = env or env_from()
    return f"[rank {env.rank}/{env.world_size}] " if env.world_size > 1 else ""


_ACTIVE: list[Dist] = []  # the job's process group, once joined (torch's own is global too)


def current() -> Dist:
    """The active job's Dist; a single-process one before (or without) ``init``."""
    return _ACTIVE[-1] if _ACTIVE else Dist()


@contextmanager
def single_process() -> Iterator[None]:
    """Within it, ``current()`` is a single-process Dist: evaluation helpers compute locally
    instead of sharding rows over ranks (for work one rank does alone, e.g. a store check)."""
    _ACTIVE.append(Dist())
    try:
        yield
    finally:
        _ACTIVE.pop()


def merge_short_tail(batches: list[torch.Tensor], world_size: int) -> list[torch.Tensor]:
    """Fold a last global batch with fewer rows than ranks into the one before it: every rank
    then has at least one row per step (an empty slice cannot go through DDP)."""
    if world_size > 1 and len(batches) > 1 and len(batches[-1]) < world_size:
        batches = [*batches[:-2], torch.cat(batches[-2:])]
    return batches


def check_world(world_size: int, batch_sizes: Mapping[str, int]) -> None:
    """More ranks than rows of a global batch leaves ranks without data: refuse up front."""
    for stage, bs in batch_sizes.items():
        if world_size > bs:
            raise ConfigError(
                f"{world_size} processes but {stage}.train.batch_size={bs}: batch_size is the "
                f"global batch, split over ranks; raise it to >= {world_size} or use fewer "
                f"processes (--nproc_per_node)"
            )


def _want_sync_bn(choice: str, device: torch.device, world_size: int) -> bool:
    if choice == "on" and device.type != "cuda":
        raise ConfigError(
            "runtime.sync_bn=on needs CUDA (SyncBatchNorm has no CPU kernel); "
            "use runtime.sync_bn=auto or off"
        )
    return world_size > 1 and (choice == "on" or (choice == "auto" and device.type == "cuda"))


def init(
    device: torch.device,
    override: str = "auto",
    env: DistEnv | None = None,
    timeout_s: int = DEFAULT_TIMEOUT_S,
    sync_bn: str = "auto",
) -> tuple[Dist, torch.device]:
    """Join the job's process group if the launcher started several processes, and make it
    the active one (``current``).

    Returns the Dist handle and this process's device (cuda:LOCAL_RANK under DDP on GPUs;
    an explicit cuda:N is made the current CUDA device). Idempotent: a second call in the same
    process (e.g. the next job of a sweep) reuses the group. A single process gets a disabled
    Dist and no process group.
    """
    env = env or env_from()
    sync = _want_sync_bn(sync_bn, device, env.world_size)
    if env.world_size <= 1:
        dist = Dist(env)
        _ACTIVE[:] = [dist]
        return dist, local_device(device, env)
    if not 0 <= env.rank < env.world_size:
        raise ConfigError(
            f"rank {env.rank} is outside world size {env.world_size}; check the "
            f"launcher's RANK/WORLD_SIZE (or SLURM_PROCID/SLURM_NTASKS)"
        )
    backend = pick_backend(device, override)
    device = local_device(device, env)
    if tdist.is_initialized():
        if tdist.get_backend() != backend:
            raise ConfigError(
                f"the process group uses {tdist.get_backend()}, this job asks "
                f"for {backend}; keep runtime.dist_backend the same"
            )
        dist = Dist(env, backend, sync)
        _ACTIVE[:] = [dist]
        return dist, device
    if env.master_addr is None or env.master_port is None:
        raise ConfigError("MASTER_ADDR/MASTER_PORT are unset; launch with torchrun or srun")
    os.environ.setdefault("MASTER_ADDR", env.master_addr)
    os.environ.setdefault("MASTER_PORT", str(env.master_port))
    kw: dict[str, Any] = {}
    if backend == "nccl":
        kw["device_id"] = device  # binds the communicator to this rank's GPU up front
    tdist.init_process_group(
        backend,
        init_method="env://",
        rank=env.rank,
        world_size=env.world_size,
        timeout=_dt.timedelta(seconds=timeout_s),
        **kw,
    )
    dist = Dist(env, backend, sync)
    _ACTIVE[:] = [dist]
    return dist, device


def shutdown() -> None:
    _ACTIVE.clear()
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def wrap(distiller: nn.Module, dist: Dist, device: torch.device, sync_bn: bool) -> nn.Module:
    """The module a training step calls: the distiller itself in one process, else the
    distiller in DistributedDataParallel (gradients of its trainable parameters averaged
    over ranks; the frozen teacher has none).

    ``sync_bn``: the student's BatchNorm layers normalise with the global batch's statistics
    (SyncBatchNorm; CUDA only). Buffers are not broadcast at every step (CRD's memory banks
    would travel each time); they are kept equal by construction (SyncBatchNorm, all-gathered
    bank updates) or synchronised from rank 0 before each evaluation (``sync_buffers``).
    """
    if not dist.enabled:
        return distiller
    if sync_bn and has_batchnorm(distiller.student):
        # in place below the root: the student object the pipeline holds stays the same
        nn.SyncBatchNorm.convert_sync_batchnorm(distiller.student)
    if hasattr(distiller, "gather"):  # CRD: update the banks with the global batch
        distiller.gather = dist.all_gather_cat
    ids = [device.index] if device.type == "cuda" else None
    # torch >= 2.14 renamed broadcast_buffers=False (no broadcast at every forward)
    no_sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        else {"broadcast_buffers": False}
    )
    return DistributedDataParallel(
        distiller, device_ids=ids, output_device=ids[0] if ids else None, **no_sync
    )


def sync_buffers(module: nn.Module, dist: Dist) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics without SyncBatchNorm),
    so that sharded evaluation evaluates one model."""
    dist.broadcast_([b for b in module.buffers()])


def get_or_build(
    store: ArtifactStore,
    dist: Dist,
    kind: str,
    spec: Any,
    build: Callable[[Any], tuple[Any, dict[str, Any]]],
    check: Callable[[Any], None] | None = None,
    collective: bool = False,
    on_wait: Callable[[], None] | None = None,
) -> Artifact:
    """``store.get_or_build`` for a job of several processes: only rank 0 writes the store.

    ``collective``: building needs every rank (DDP training): all ranks run ``build`` on the
    same work directory (rank 0 alone writes its checkpoints there) and rank 0 commits the
    result. Otherwise (e.g. the teacher-logit cache) rank 0 builds alone. Either way the other
    ranks wait at a barrier and then load what rank 0 stored, so every rank holds the same
    bytes.
    """
    if not dist.enabled:
        return store.get_or_build(kind, spec, build, check=check, on_wait=on_wait)
    found = dist.broadcast_object(store.has(kind, spec, check) if dist.is_main else None)
    if not found and collective:
        workdir = store.dir(kind, content_key(spec))
        workdir.mkdir(parents=True, exist_ok=True)
        result = build(workdir)
        if dist.is_main:
            store.get_or_build(kind, spec, lambda _d: result, check=check)
    elif dist.is_main:
        store.get_or_build(kind, spec, build, check=check, on_wait=on_wait)
    dist.barrier()
    art = store.get_or_build(kind, spec, _built_by_rank0, check=check)
    # "from the store" means: loaded instead of built by this job
    return Artifact(art.payload, art.meta, bool(found), art.path)


def _built_by_rank0(_workdir: Any) -> tuple[Any, dict[str, Any]]:
    raise ConfigError(
        "rank 0 did not leave the artifact in the store; store_dir must be a "
        "directory every rank sees (a shared filesystem across nodes)"
    )
