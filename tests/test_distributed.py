"""Distributed glue without a process group (the 2-rank run is in test_ddp.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sgs_tad.distributed import (
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
