"""Distributed glue without a process group (the 2-rank run is in test_ddp.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sgs_tad.training.distributed import (
    GradientReducer,
    ShardedSampler,
    broadcast_module_states,
    check_same_on_all_ranks,
    gather_objects,
    get_rank,
    get_world_size,
    is_distributed,
    unwrap_model,
)


def test_single_process_defaults_are_no_ops():
    assert not is_distributed() and get_rank() == 0 and get_world_size() == 1
    layer = nn.Linear(2, 1)
    layer(torch.ones(1, 2)).sum().backward()
    grad = layer.weight.grad.clone()
    assert GradientReducer(list(layer.parameters())).reduce([1, 0, 2.5]) == [1.0, 0.0, 2.5]
    assert torch.equal(layer.weight.grad, grad)
    broadcast_module_states([layer])
    check_same_on_all_ranks(3, "anything")
    assert gather_objects({"a": 1}) == [{"a": 1}]
    with pytest.raises(ValueError, match="bucket_cap_mb"):
        GradientReducer([], bucket_cap_mb=0)


def test_buckets_respect_the_cap_and_keep_parameter_order():
    params = [nn.Parameter(torch.zeros(1000)) for _ in range(5)]  # 4000 bytes each
    reducer = GradientReducer(params, bucket_cap_mb=10_000 / 2**20)
    assert reducer._buckets == [[0, 1], [2, 3], [4]]
    half = [nn.Parameter(torch.zeros(3, dtype=torch.float16))]
    assert GradientReducer(half)._flags_bucket is None
    assert GradientReducer([*half, params[0]])._flags_bucket == 1


def test_unwrap_model():
    layer = nn.Linear(2, 2)
    assert unwrap_model(layer) is layer
    with pytest.raises(TypeError, match="DataParallel is not supported"):
        unwrap_model(nn.DataParallel(layer))


def test_sharded_sampler_order_depends_on_seed_and_epoch_and_skips():
    sampler = ShardedSampler(10, shuffle=True, seed=3)
    sampler.set_epoch(0)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and len(sampler) == 10
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    sampler.set_epoch(0, skip=4)
    assert list(sampler) == first[4:] and len(sampler) == 6
    identity = ShardedSampler(4, shuffle=False)
    identity.set_epoch(0)
    assert list(identity) == [0, 1, 2, 3]


# ------------------------------------------------------------------------------ timeouts


def test_ddp_timeout_comes_from_the_argument_the_environment_or_the_default(monkeypatch):
    import datetime

    from sgs_tad.training.distributed import (
        DDP_TIMEOUT_ENV,
        DEFAULT_DDP_TIMEOUT_S,
        resolve_ddp_timeout,
    )

    monkeypatch.delenv(DDP_TIMEOUT_ENV, raising=False)
    assert resolve_ddp_timeout().total_seconds() == DEFAULT_DDP_TIMEOUT_S
    monkeypatch.setenv(DDP_TIMEOUT_ENV, "42")
    assert resolve_ddp_timeout().total_seconds() == 42
    assert resolve_ddp_timeout(7).total_seconds() == 7
    assert resolve_ddp_timeout(datetime.timedelta(minutes=2)).total_seconds() == 120
    monkeypatch.setenv(DDP_TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=r"\$SGS_TAD_DDP_TIMEOUT must be a number of seconds > 0"):
        resolve_ddp_timeout()
    with pytest.raises(ValueError, match=r"timeout must be a number of seconds > 0 .*; got 0\."):
        resolve_ddp_timeout(0)


def test_init_distributed_without_torchrun_is_a_no_op(monkeypatch):
    from sgs_tad.training.distributed import init_distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed(timeout=3) == (0, 1)
    assert not is_distributed()


def _stuck_rank_worker(rank: int, init_file: str, out_dir: str) -> None:
    """Rank 1 sleeps past the 3 s timeout before the gradient all-reduce; rank 0 waits."""
    import os
    import time

    from sgs_tad.training.distributed import CollectiveError, init_distributed

    torch.set_num_threads(1)
    init_distributed("gloo", timeout=3, init_method=f"file://{init_file}", rank=rank,
                     world_size=2)  # fmt: skip
    layer = nn.Linear(2, 1)
    layer(torch.ones(1, 2)).sum().backward()
    reducer = GradientReducer(list(layer.parameters()))
    reducer.reduce([0.0])  # both ranks answer: no timeout
    if rank == 1:
        time.sleep(9)
    try:
        reducer.reduce([0.0])
        message = "no error"
    except CollectiveError as err:
        message = f"{err}|missing={err.missing_ranks}|timed_out={err.timed_out}"
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write(message)
    if rank == 0:
        time.sleep(1)  # let rank 1 see its error before the group goes away
    torch.distributed.destroy_process_group()


@pytest.mark.ddp
def test_a_stuck_rank_fails_the_collective_naming_the_rank(tmp_path):
    import time

    import torch.multiprocessing as mp

    start = time.monotonic()
    ctx = mp.spawn(_stuck_rank_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2,
                   join=False)  # fmt: skip
    deadline = time.monotonic() + 90
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the 2-rank run did not finish in 90 s: the timeout did not fire")
    rank0 = (tmp_path / "rank0.txt").read_text()
    assert "all_reduce of the gradients timed out on rank 0 of 2 after 3 s" in rank0, rank0
    assert "rank(s) [1] did not answer" in rank0 and "missing=[1]" in rank0, rank0
    assert "--ddp-timeout" in rank0 and "SGS_TAD_DDP_TIMEOUT" in rank0
    rank1 = (tmp_path / "rank1.txt").read_text()
    assert rank1.startswith("all_reduce of the gradients") and "on rank 1 of 2" in rank1, rank1
    assert time.monotonic() - start < 60
