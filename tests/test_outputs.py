"""Output folders (issue 23): atomic final files, a full disk, leftovers, one run per folder,
checkpoints that can always be read back."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sgs_tad import SequentializedGradientSampler
from sgs_tad.training import outputs
from sgs_tad.training.checkpoint import CheckpointManager, atomic_save
from sgs_tad.training.metrics import MetricsWriter
from sgs_tad.training.outputs import (
    DiskFullError,
    OutputLock,
    OutputLockedError,
    atomic_torch_save,
    atomic_write_json,
)
from sgs_tad.training.trainer import SGSTrainer

SRC = Path(__file__).resolve().parents[1] / "src"


def tiny_trainer(directory: Path | None, **kwargs) -> SGSTrainer:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    detector = nn.Linear(4, 1)
    options = {"loss_fn": lambda out, batch, info: out.square().mean()}
    options.update(kwargs)
    return SGSTrainer(
        SequentializedGradientSampler(encoder, ratio=0.5, micro_batch_size=2),
        detector,
        checkpoint_dir=directory,
        **options,
    )


def data(n: int = 4) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [{"snippets": torch.randn(3, 2, 3, generator=g)} for _ in range(n)]


# ------------------------------------------------------------------------- atomic writes


class FullDisk:
    """A file object whose writes fail as on a full disk."""

    def __init__(self, raw) -> None:
        self.raw = raw

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.raw, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.raw.close()


@pytest.mark.parametrize("kind", ["torch", "json"])
def test_a_full_disk_says_so_and_keeps_the_old_file(tmp_path: Path, monkeypatch, kind) -> None:
    target = tmp_path / ("model.pt" if kind == "torch" else "metrics.json")
    if kind == "torch":
        atomic_torch_save({"w": torch.zeros(3)}, target)
    else:
        atomic_write_json(target, {"old": 1})
    before = target.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(outputs.os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k)))
    with pytest.raises(DiskFullError, match="is full.*unchanged"):
        if kind == "torch":
            atomic_torch_save({"w": torch.ones(100_000)}, target)
        else:
            atomic_write_json(target, {"new": 2})
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary left


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch) -> None:
    manager = CheckpointManager(tmp_path)
    manager.save({"step": 1}, step=1)
    real_fdopen = os.fdopen
    monkeypatch.setattr(outputs.os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k)))
    with pytest.raises(DiskFullError):
        manager.save({"step": 2, "w": torch.ones(1000)}, step=2)
    monkeypatch.undo()
    state, _ = manager.load_latest()
    assert state["step"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-000000001.pt",
        "checkpoint-000000001.pt.sha256",
    ]


def test_temporary_names_are_unpredictable_and_never_follow_a_planted_link(tmp_path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for name in (f".model.pt.{os.getpid()}.tmp", ".model.pt.tmp", "model.pt.tmp"):
        (tmp_path / name).symlink_to(victim)
    atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "model.pt")
    assert victim.read_text() == "keep me"
    assert torch.load(tmp_path / "model.pt", weights_only=True)["w"].shape == (2,)


def test_a_killed_checkpoint_write_is_cleaned_up_at_the_next_start(tmp_path, caplog) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    # What a SIGKILL between the sidecar and the rename leaves, and one mid-torch.save.
    (ckpt / ".checkpoint-000000004.pt.k2j3h4.tmp").write_bytes(b"x" * 1000)
    (ckpt / ".checkpoint-000000004.pt.sha256.a8d7.tmp").write_text("abc")
    (ckpt / "checkpoint-000000004.pt.sha256").write_text("0" * 64 + "  checkpoint-000000004.pt\n")
    (ckpt / "notes.tmp").write_text("the user's")  # not ours: left alone
    trainer = tiny_trainer(ckpt)
    with caplog.at_level(logging.WARNING):
        trainer.fit(data(), epochs=1, batch_size=2)
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == ["checkpoint-000000002.pt", "checkpoint-000000002.pt.sha256", "notes.tmp"]
    assert "interrupted write" in caplog.text


# --------------------------------------------------------------------------------- locks

HOLD = textwrap.dedent(
    """
    import sys, time
    from sgs_tad.training.outputs import OutputLock
    with OutputLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
    """
)


@pytest.fixture
def held_lock(tmp_path: Path):
    folder = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                            env=env, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield folder, proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_run_in_the_same_folder_is_refused(held_lock) -> None:
    folder, proc = held_lock
    with pytest.raises(OutputLockedError, match=rf"in use by process {proc.pid}.*another folder"):
        OutputLock(folder).acquire()
    trainer = tiny_trainer(folder / "checkpoints", log_dir=folder)
    with pytest.raises(OutputLockedError, match="log_dir"):
        trainer.fit(data(), epochs=1, batch_size=2)
    assert not (folder / "metrics.jsonl").exists()


def test_a_lock_left_by_a_killed_run_is_taken_over(held_lock) -> None:
    folder, proc = held_lock
    proc.kill()
    proc.wait()
    assert (folder / outputs.LOCK_NAME).exists()  # SIGKILL: the file stays, the lock does not
    with OutputLock(folder) as lock, OutputLock(folder):  # the same process may nest
        assert str(os.getpid()) in lock.path.read_text()
    assert not (folder / outputs.LOCK_NAME).exists()


# ------------------------------------------------------------ checkpoints always readable


def test_path_and_numpy_settings_resume(tmp_path: Path) -> None:
    settings = {"root": Path("data/x"), "lr": np.float32(0.5), "n": np.int64(3),
                "sizes": (1, 2), "grid": np.arange(3)}  # fmt: skip
    first = tiny_trainer(tmp_path, settings=settings)
    first.fit(data(), epochs=1, batch_size=2)
    second = tiny_trainer(tmp_path, settings=settings)
    second.fit(data(), epochs=2, batch_size=2, resume=True)
    assert second.step == 4
    assert first.settings == {"root": "data/x", "lr": 0.5, "n": 3, "sizes": [1, 2],
                              "grid": [0, 1, 2]}  # fmt: skip


def test_settings_that_cannot_be_stored_are_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"settings\['model'\] is a torch.nn.*Linear"):
        tiny_trainer(tmp_path, settings={"model": nn.Linear(1, 1)})


def test_damaged_sidecar_falls_back_to_the_previous_checkpoint(tmp_path, caplog) -> None:
    manager = CheckpointManager(tmp_path)
    manager.save({"step": 1}, step=1)
    newest = manager.save({"step": 2}, step=2)
    newest.with_name(newest.name + ".sha256").write_bytes(b"\xff\xfe\x00garbage")
    with caplog.at_level(logging.WARNING):
        state, _ = manager.load_latest()
    assert state["step"] == 1 and "digest file" in caplog.text


def test_non_utf8_metrics_lines_are_dropped_with_a_warning(tmp_path, caplog) -> None:
    (tmp_path / "metrics.jsonl").write_bytes(
        b'{"step": 1, "loss": 1.0}\n\xff\xfe garbage\n{"step": 2, "loss": 0.5}\n'
    )
    with caplog.at_level(logging.WARNING):
        dropped = MetricsWriter(tmp_path).truncate_after(1)
    assert dropped == 2 and "not UTF-8" in caplog.text
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": 1.0}\n'


def test_no_message_advises_weights_only_false() -> None:
    root = Path(__file__).resolve().parents[1]
    offenders = [
        str(p.relative_to(root))
        for folder in ("src", "examples", "docs")
        for p in (root / folder).rglob("*")
        if p.suffix in (".py", ".md") and "weights_only=False" in p.read_text(errors="replace")
    ]
    assert offenders == []


# ------------------------------------------------------------------ constructor arguments


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"loss_fn": 3}, TypeError, "loss_fn must be a callable.*int 3"),
        ({"scheduler": 5}, TypeError, "scheduler must be a callable.*int 5"),
        ({"optimizer": "adam"}, TypeError, "optimizer must be a callable"),
        ({"optimizer": lambda e, d: 3}, TypeError, "must return a torch.optim.Optimizer"),
        ({"scheduler": lambda o: 3}, TypeError, "must return a learning-rate scheduler"),
        ({"callbacks": [print]}, TypeError, "Callback instances"),
        ({"seed": "0"}, TypeError, "seed must be an int"),
        ({"loss_key": 1}, TypeError, "loss_key must be a str"),
        ({"required_keys": "labels"}, TypeError, "sequence of str"),
        ({"log_dir": 3}, TypeError, "log_dir must be a path"),
        ({"max_grad_norm": "1"}, ValueError, "max_grad_norm must be None or a number"),
        ({"settings": [1, 2]}, TypeError, "settings must be a mapping"),
    ],
)
def test_wrong_constructor_arguments_are_named(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        tiny_trainer(None, **kwargs)


def test_an_optimizer_without_the_encoder_warns() -> None:
    with pytest.warns(UserWarning, match="2 of the encoder's 2 trainable parameters"):
        tiny_trainer(None, optimizer=lambda enc, det: torch.optim.SGD(det.parameters(), lr=0.1))


def test_an_empty_training_set_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="dataset is empty.*at least one video"):
        tiny_trainer(None).fit([], epochs=1)


def test_atomic_save_still_writes_a_verified_checkpoint(tmp_path: Path) -> None:
    path = atomic_save({"w": torch.ones(2)}, tmp_path / "c.pt")
    assert (tmp_path / "c.pt.sha256").read_text().split()[1] == "c.pt" and path.is_file()
