"""kdrun.engine.distributed: launcher environments (torchrun, faked Slurm), sharding, and the
collectives on two real gloo processes."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from kdrun.engine import distributed as D
from kdrun.errors import ConfigError
from kdrun.store import ArtifactStore

SLURM = {
    "SLURM_PROCID": "5",
    "SLURM_NTASKS": "8",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_NODELIST": "gpu[003-004,9]",
    "SLURM_JOB_ID": "123456",
}


@pytest.mark.parametrize(
    "nodelist,host",
    [
        ("gpu[003-004,9]", "gpu003"),
        ("node7", "node7"),
        ("a1,b2", "a1"),
        ("cn[12,15-16],gpu1", "cn12"),
        ("x-y[0-3]", "x-y0"),
    ],
)
def test_first_host_of_slurm_nodelists(nodelist, host):
    assert D.first_host(nodelist) == host


def test_slurm_environment_gives_rank_world_and_rendezvous():
    env = D.env_from(SLURM)
    assert (env.rank, env.world_size, env.local_rank, env.source) == (5, 8, 1, "slurm")
    assert env.master_addr == "gpu003"
    # every task derives the same port from the job id alone; another job gets another port
    assert env.master_port == D.slurm_port("123456") != D.slurm_port("123457")
    explicit = D.env_from({**SLURM, "MASTER_ADDR": "head", "MASTER_PORT": "29400"})
    assert (explicit.master_addr, explicit.master_port) == ("head", "29400")


def test_torchrun_variables_win_over_slurm():
    env = D.env_from(
        {
            **SLURM,
            "RANK": "1",
            "WORLD_SIZE": "2",
            "LOCAL_RANK": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29500",
        }
    )
    assert (env.rank, env.world_size, env.source) == (1, 2, "torchrun")


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_NODELIST": "n1"},  # sweep job
        {"SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "n1"},  # a shell in salloc, not srun
    ],
)
def test_single_process_environments(environ):
    env = D.env_from(environ)
    assert env.world_size == 1 and env.source == "single"
    dist, dev = D.init(torch.device("cpu"), env=env)
    assert not dist.enabled and dist.is_main and dev == torch.device("cpu")
    idx = torch.arange(7)
    assert torch.equal(dist.shard(idx), idx) and dist.loss_scale(3, 7) == 1.0


def test_bad_environment_and_backend_are_one_line_errors():
    with pytest.raises(ConfigError, match="SLURM_PROCID"):
        D.env_from({**SLURM, "SLURM_PROCID": "x"})
    with pytest.raises(ConfigError, match="dist_backend=gloo"):
        D.pick_backend(torch.device("cpu"), "nccl")
    with pytest.raises(ConfigError, match="auto, nccl or gloo"):
        D.pick_backend(torch.device("cpu"), "mpi")
    assert D.pick_backend(torch.device("cpu")) == "gloo"
    assert D.pick_backend(torch.device("cuda")) == "nccl"
    with pytest.raises(ConfigError, match="outside world size"):
        D.init(torch.device("cpu"), env=D.DistEnv(rank=2, world_size=2))
    with pytest.raises(ConfigError, match="batch_size=1:.*fewer processes"):
        D.check_world(2, {"teacher": 64, "student": 1})


def test_shards_of_a_global_batch_cover_it_in_order():
    idx = torch.randperm(11)
    for world in (1, 2, 3, 4):
        parts = [D.Dist(D.DistEnv(rank=r, world_size=world)).shard(idx) for r in range(world)]
        assert torch.equal(torch.cat(parts), idx)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        scales = [
            D.Dist(D.DistEnv(rank=r, world_size=world)).loss_scale(len(p), 11)
            for r, p in enumerate(parts)
        ]
        # DDP averages gradients over ranks: the scaled local means average to the global mean
        assert sum(s * len(p) / max(len(p), 1) for s, p in zip(scales, parts, strict=True)) / (
            world
        ) == pytest.approx(1.0)


def test_short_last_batch_is_folded_into_the_previous_one():
    batches = list(torch.arange(9).split(4))  # 4, 4, 1
    merged = D.merge_short_tail(batches, 2)
    assert [len(b) for b in merged] == [4, 5]
    assert torch.equal(torch.cat(merged), torch.arange(9))
    assert D.merge_short_tail(batches, 1) is batches


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _store_calls(dist: D.Dist, root: str) -> tuple:
    """Rank 0 alone builds a non-collective artifact; every rank builds a collective one;
    every rank ends with rank 0's stored bytes."""
    store = ArtifactStore(root)
    built = []

    def build(tag):
        def fn(_workdir):
            built.append(tag)
            return torch.full((3,), float(dist.rank)), {"by": dist.rank}

        return fn

    a = D.get_or_build(store, dist, "cache", {"k": 1}, build("cache"))
    b = D.get_or_build(store, dist, "teacher", {"k": 2}, build("teacher"), collective=True)
    again = D.get_or_build(store, dist, "cache", {"k": 1}, build("cache-again"))
    return built, a.payload.tolist(), b.payload.tolist(), a.from_cache, again.from_cache


def _worker(rank: int, world: int, port: int, out: dict, root: str) -> None:
    torch.set_num_threads(1)
    env = D.DistEnv(rank, world, rank, "127.0.0.1", str(port), "torchrun")
    dist, _ = D.init(torch.device("cpu"), env=env, timeout_s=60)
    try:
        # ragged all-gather in rank order
        got = dist.all_gather_cat(torch.full((rank + 1, 2), float(rank)))
        rows = dist.sharded_rows(
            7, lambda a, b: torch.arange(a, b).float()[:, None] * 2, torch.device("cpu")
        )
        flag = dist.any(rank == 1, torch.device("cpu"))
        obj = dist.broadcast_object({"from": rank})
        t = torch.tensor([float(rank)])
        dist.broadcast_([t])
        dist.barrier()
        stored = _store_calls(dist, root)
        out[rank] = (
            got.tolist(),
            rows.flatten().tolist(),
            flag,
            obj,
            t.item(),
            dist.backend,
            stored,
        )
    finally:
        D.shutdown()


@pytest.mark.slow
def test_collectives_on_two_gloo_processes(tmp_path):
    with mp.Manager() as m:
        out = m.dict()
        mp.spawn(_worker, args=(2, _free_port(), out, str(tmp_path)), nprocs=2, join=True)
        res = dict(out)
    expected_gather = [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
    for rank in (0, 1):
        got, rows, flag, obj, t, backend, stored = res[rank]
        built, cache, teacher, cache_hit, cache_hit_again = stored
        assert built == (["cache", "teacher"] if rank == 0 else ["teacher"])
        assert cache == teacher == [0.0, 0.0, 0.0]  # rank 0's bytes everywhere
        assert cache_hit is False and cache_hit_again is True
        assert got == expected_gather
        assert rows == [2.0 * i for i in range(7)]
        assert flag is True and obj == {"from": 0} and t == 0.0 and backend == "gloo"


def _crd_worker(rank: int, world: int, port: int, out: dict) -> None:
    torch.set_num_threads(1)
    env = D.DistEnv(rank, world, rank, "127.0.0.1", str(port), "torchrun")
    dist, _ = D.init(torch.device("cpu"), env=env, timeout_s=60)
    try:
        d = _crd()
        d.gather = dist.all_gather_cat
        idx, v_s, v_t = _global_batch()
        a, b = dist.bounds(len(idx))
        d._update_memory(idx[a:b], v_s[a:b], v_t[a:b])
        out[rank] = (d.memory_s.clone(), d.memory_t.clone())
    finally:
        D.shutdown()


def _crd():
    from torch import nn

    from kdrun.methods.crd import CRD, CRDOptions

    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4)) for _ in range(2)]
    for net in nets:
        net.kd_stages, net.kd_head = ["0"], "2"
    labels = torch.arange(20) % 4
    return CRD(
        nets[0], nets[1], CRDOptions(nce_k=8, feat_dim=6), (5, 5), labels, torch.arange(20), 0
    )


def _global_batch():
    g = torch.Generator().manual_seed(3)
    return (
        torch.randperm(20, generator=g)[:7],
        torch.randn(7, 6, generator=g),
        torch.randn(7, 6, generator=g),
    )


@pytest.mark.slow
def test_crd_banks_stay_identical_across_ranks_and_equal_one_process():
    """Each rank updates the banks with the all-gathered embeddings and indices of the global
    batch: both ranks end with the banks one process gets from the whole batch."""
    ref = _crd()
    ref._update_memory(*_global_batch())
    with mp.Manager() as m:
        out = m.dict()
        mp.spawn(_crd_worker, args=(2, _free_port(), out), nprocs=2, join=True)
        res = dict(out)
    for rank in (0, 1):
        assert torch.equal(res[rank][0], ref.memory_s) and torch.equal(res[rank][1], ref.memory_t)
