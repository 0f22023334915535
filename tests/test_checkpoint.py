"""Checkpoint files: atomic writes, verification, fallback, keep-last, RNG states, fingerprints."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from sgs_tad.engine.rng import capture_global_rng_state, restore_global_rng_state
from sgs_tad.training.checkpoint import (
    CheckpointError,
    CheckpointManager,
    atomic_save,
    describe_shape_mismatch,
    load_checkpoint,
    model_fingerprint,
    parameter_shapes,
)


def test_atomic_save_round_trip_leaves_no_temporary_files(tmp_path):
    path = atomic_save({"w": torch.arange(4.0), "n": 3}, tmp_path / "a.pt")
    state = load_checkpoint(path)
    assert torch.equal(state["w"], torch.arange(4.0)) and state["n"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "a.pt.sha256"]


def test_truncated_file_is_refused_and_the_previous_one_is_used(tmp_path, caplog):
    manager = CheckpointManager(tmp_path, keep_last=3)
    manager.save({"step": 1, "w": torch.ones(1000)}, step=1)
    latest = manager.save({"step": 2, "w": torch.ones(1000)}, step=2)
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(latest)
    with caplog.at_level("WARNING"):
        state, path = manager.load_latest()
    assert state["step"] == 1 and path.name == "checkpoint-000000001.pt"
    assert "checkpoint-000000002.pt" in caplog.text


def test_corrupt_byte_without_sidecar_is_refused(tmp_path):
    path = atomic_save({"w": torch.ones(1000)}, tmp_path / "a.pt")
    path.with_name("a.pt.sha256").unlink()
    path.write_bytes(path.read_bytes()[:-100])  # torch.load itself must notice
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(path)


def test_weights_only_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": nn.Linear(1, 1)}, path)  # a pickled module, not plain tensors
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(path)


def test_all_checkpoints_broken_raises_with_each_reason(tmp_path):
    manager = CheckpointManager(tmp_path)
    for step in (1, 2):
        manager.save({"step": step}, step=step).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="none of the 2 checkpoints"):
        manager.load_latest()
    assert CheckpointManager(tmp_path / "empty").load_latest() is None


def test_keep_last_prunes_old_checkpoints_and_sidecars(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in range(1, 6):
        manager.save({"step": step}, step=step)
    assert [p.name for p in manager.checkpoints()] == [
        "checkpoint-000000004.pt",
        "checkpoint-000000005.pt",
    ]
    assert len(list(tmp_path.glob("*.sha256"))) == 2
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=0)


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.randn()  # leave a cached gaussian in numpy's state
    path = atomic_save({"rng": capture_global_rng_state()}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_global_rng_state(load_checkpoint(path)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    assert torch.equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert got[2] == expected[2] and got[3] == expected[3]


def test_fingerprint_depends_on_architecture_not_weights():
    a, b = nn.Linear(3, 4), nn.Linear(3, 4)
    assert model_fingerprint({"m": a}) == model_fingerprint({"m": b})
    c = nn.Linear(3, 5)
    assert model_fingerprint({"m": a}) != model_fingerprint({"m": c})
    diff = describe_shape_mismatch(parameter_shapes({"m": a}), parameter_shapes({"m": c}))
    assert "m.weight: checkpoint [4, 3] vs model [5, 3]" in diff
    d = nn.Sequential(nn.Linear(3, 4))
    diff = describe_shape_mismatch(parameter_shapes({"m": a}), parameter_shapes({"m": d}))
    assert "in the checkpoint only: m.weight" in diff and "m.0.weight" in diff
