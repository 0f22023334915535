"""DDP on CUDA without GPUs (issue 20, F8/F19): torch.cuda and torch.distributed are
monkeypatched to record what init_distributed calls, in which order and with what."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from sgs_tad.training import distributed as du


@pytest.fixture
def calls(monkeypatch):
    """Fake a 2-GPU machine and a process group; record the calls in order."""
    log: list[tuple[str, dict]] = []
    state = {"initialised": False}

    def init_process_group(backend, **kwargs):
        log.append(("init_process_group", {"backend": backend, **kwargs}))
        state["initialised"] = True

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    monkeypatch.setattr(dist, "is_initialized", lambda: state["initialised"])
    monkeypatch.setattr(dist, "new_group", lambda **kw: log.append(("new_group", kw)) or "gloo")
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "barrier", lambda group=None, **kw: log.append(("barrier", {
        "group": group})))  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: log.append(("set_device", {"d": d})))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(du, "_monitor_group", None)
    monkeypatch.setattr(du, "_timeout_s", None)
    return log


def test_set_device_comes_before_the_process_group_with_device_id(calls):
    assert du.init_distributed(device="cuda") == (1, 2)
    names = [name for name, _ in calls]
    assert names.index("set_device") < names.index("init_process_group")
    assert calls[names.index("set_device")][1]["d"] == torch.device("cuda", 1)
    init = calls[names.index("init_process_group")][1]
    assert init["backend"] == "nccl"
    assert init["device_id"] == torch.device("cuda", 1)


def test_explicit_matching_index_is_used(calls):
    du.init_distributed(device="cuda:1")
    assert ("set_device", {"d": torch.device("cuda", 1)}) in calls


def test_explicit_index_other_than_local_rank_is_refused(calls):
    with pytest.raises(ValueError, match=r"cuda:0.*LOCAL_RANK=1.*--device cuda"):
        du.init_distributed(device="cuda:0")
    assert not any(name == "init_process_group" for name, _ in calls)


def test_resolve_device_maps_cuda_to_the_local_rank(calls):
    assert du.resolve_device("cuda") == torch.device("cuda", 1)
    assert du.resolve_device("cpu") == torch.device("cpu")


def test_barrier_waits_on_the_gloo_group_not_nccl(calls):
    du.init_distributed(device="cuda")
    du.barrier("waiting for rank 0 to generate the data")
    assert ("barrier", {"group": "gloo"}) in calls
